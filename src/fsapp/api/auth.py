"""Optional API keys: bearer tokens with scopes.

`api_keys` maps a token to its scopes (`{"s3cret": {"read", "write"}}`, or a
comma-separated string). `admin` grants every scope; `read` and `write` are
independent, so an ingest job's key need not be able to read features.
Tokens are kept as SHA-256 digests and looked up by digest, so comparing a
presented token does not leak its prefix through timing.
"""
from __future__ import annotations

import hashlib

import falcon

SCOPES = ("read", "write", "admin")


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


def _scopes(value) -> frozenset[str]:
    items = value.split(",") if isinstance(value, str) else list(value)
    scopes = frozenset(s.strip() for s in items if s.strip())
    unknown = scopes - set(SCOPES)
    if unknown or not scopes:
        raise ValueError(f"API key scopes must be among {', '.join(SCOPES)}; got {sorted(scopes)}")
    return scopes


class ApiKeys:
    def __init__(self, keys: dict):
        self.by_digest = {_digest(t): _scopes(s) for t, s in keys.items()}

    def check(self, req: falcon.Request, needed: str) -> None:
        """Raises 401 (no or unknown token) or 403 (token lacks `needed`)."""
        header = req.get_header("Authorization")
        challenge = 'Bearer realm="fstore"'
        if not header:
            raise falcon.HTTPUnauthorized(title="Authentication required",
                                          description="send an API key as 'Authorization: Bearer <key>'",
                                          challenges=[challenge])
        scheme, _, token = header.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise falcon.HTTPUnauthorized(title="Authentication required",
                                          description="the Authorization header must be 'Bearer <key>'",
                                          challenges=[challenge])
        scopes = self.by_digest.get(_digest(token.strip()))
        if scopes is None:
            raise falcon.HTTPUnauthorized(title="Invalid API key", description="this API key is not known; "
                                          "check the key or ask for a new one", challenges=[challenge])
        if needed not in scopes and "admin" not in scopes:
            raise falcon.HTTPForbidden(title="Missing scope",
                                       description=f"this API key lacks the {needed!r} scope this endpoint needs "
                                                   f"(it has {', '.join(sorted(scopes))})")
