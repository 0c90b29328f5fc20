"""The Python SDK: `FeatureStore` (the engine in-process over a repo) and
`Client` (the same calls over HTTP against `fstore serve`). See docs/sdk.md."""
from fsapp.sdk.client import Client
from fsapp.sdk.embedded import FeatureStore
from fsapp.sdk.errors import AuthError, ClientError, RequestError, ServerError, ServiceUnavailable
from fsapp.sdk.results import OnlineResponse, TrainingSet

__all__ = ["FeatureStore", "Client", "OnlineResponse", "TrainingSet", "ClientError", "RequestError", "AuthError",
           "ServiceUnavailable", "ServerError"]
