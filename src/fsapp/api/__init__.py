"""The REST API (Falcon): `create_app(backend)` over any `Backend`;
`EngineBackend` serves an in-process engine."""
from fsapp.api.app import create_app
from fsapp.api.backend import Backend, EngineBackend

__all__ = ["create_app", "Backend", "EngineBackend"]
