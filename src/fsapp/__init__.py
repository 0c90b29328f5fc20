"""fsapp: everything a user touches (registry, engine, offline store, API, SDK, CLI).

    from fsapp import FeatureStore, Client
"""


def __getattr__(name):
    # Lazy: `import fsapp.registry` (e.g. in a gunicorn worker) should not pay
    # for the SDK's imports, and the SDK imports fsapp's subpackages.
    if name in ("FeatureStore", "Client"):
        from fsapp import sdk

        return getattr(sdk, name)
    raise AttributeError(f"module 'fsapp' has no attribute {name!r}")


__all__ = ["FeatureStore", "Client"]
