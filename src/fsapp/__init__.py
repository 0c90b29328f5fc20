"""fsapp: everything a user touches (registry, engine, offline store, API, SDK, CLI)."""
