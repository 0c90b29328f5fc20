"""Optional API keys: bearer tokens with scopes.

`api_keys` maps a token to its scopes (`{"s3cret": {"read", "write"}}`, or a
comma-separated string). `admin` grants every scope; `read` and `write` are
independent, so an ingest job's key need not be able to read features.
Tokens are kept as SHA-256 digests and looked up by digest, so comparing a
presented token does not leak its prefix through timing.

`fstore serve` reads them from a keys file (`load_api_keys_file`): one key a
line, the token, then its scopes separated by commas; `#` starts a comment:

    # ingest job
    3f9c0d7e1b2a  write
    9a41e5c07d33  read,write
"""
from __future__ import annotations

import hashlib
import os
import re

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


class KeysFileError(ValueError):
    """A keys file that cannot be used; the message names the file and line."""


def load_api_keys_file(path) -> dict[str, frozenset[str]]:
    """{token: scopes} from a keys file (format above). A file that cannot be
    read, a malformed line, a token listed twice or a file with no key raise
    KeysFileError "PATH line N: what is wrong" (an empty file would
    otherwise leave the API open)."""
    try:
        with open(path, encoding="utf-8-sig") as f:  # -sig: an editor's byte-order mark is not part of a token
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise KeysFileError(f"{path}: cannot read the API keys file: {reason}") from None
    keys: dict[str, frozenset[str]] = {}
    for no, line in enumerate(text.splitlines(), 1):
        body = line.split("#", 1)[0].strip()
        if not body:
            continue
        parts = body.split(None, 1)
        if len(parts) != 2 or not re.fullmatch(r"[\w.,\s-]+", parts[1]):
            raise KeysFileError(f"{path} line {no}: expected 'TOKEN SCOPE[,SCOPE]' (scopes: {', '.join(SCOPES)})")
        token, scopes = parts
        if token in keys:
            raise KeysFileError(f"{path} line {no}: this token is listed twice")
        try:
            keys[token] = _scopes(scopes)
        except ValueError as e:
            raise KeysFileError(f"{path} line {no}: {e}") from None
    if not keys:
        raise KeysFileError(f"{path}: no API keys in the file; add lines 'TOKEN SCOPE[,SCOPE]' "
                            "(an empty keys file would leave the API open)")
    return keys


def parse_api_keys_env(text: str) -> dict | None:
    """The older FSTORE_API_KEYS variable, `token=scope[,scope];token=...`
    (kept working; a keys file is the documented way)."""
    if not text.strip():
        return None
    keys = {}
    for item in text.split(";"):
        token, _, scopes = item.strip().partition("=")
        if not token or not scopes:
            raise ValueError("FSTORE_API_KEYS must look like 'token1=read;token2=read,write'")
        keys[token] = _scopes(scopes)
    return keys


def server_api_keys(keys_file, env_keys: str = "") -> dict | None:
    """The keys a server enforces: the keys file's, or the FSTORE_API_KEYS
    variable's (`env_keys`); None when neither is set (an open API). Both at
    once is refused: which one holds is not obvious to whoever reads only one."""
    from_env = parse_api_keys_env(env_keys)
    if keys_file and from_env:
        raise ValueError(f"API keys are set twice: in {keys_file} and in the FSTORE_API_KEYS variable; "
                         "keep the keys file and unset FSTORE_API_KEYS")
    return load_api_keys_file(keys_file) if keys_file else from_env


def api_keys_for(repo, environ=os.environ) -> dict | None:
    """The keys a server of `repo` enforces (REST workers and gRPC servers
    alike): the keys file the supervisor names (FSTORE_API_KEYS_FILE) or the
    repo's, else FSTORE_API_KEYS (server_api_keys)."""
    keys_file = environ.get("FSTORE_API_KEYS_FILE") or repo.api_keys_file
    return server_api_keys(keys_file, environ.get("FSTORE_API_KEYS", ""))


class ApiKeys:
    def __init__(self, keys: dict):
        self.by_digest = {_digest(t): _scopes(s) for t, s in keys.items()}

    def check(self, req: falcon.Request, needed: str) -> None:
        """Raises 401 (no or unknown token) or 403 (token lacks `needed`)."""
        self.verify(req.get_header("Authorization"), needed)

    def verify(self, header: str | None, needed: str) -> None:
        """`check` for an Authorization value from anywhere (gRPC metadata too)."""
        scopes = self.scopes_of(header)
        if needed not in scopes and "admin" not in scopes:
            raise falcon.HTTPForbidden(title="Missing scope",
                                       description=f"this API key lacks the {needed!r} scope this endpoint needs "
                                                   f"(it has {', '.join(sorted(scopes))})")

    def scopes_of(self, header: str | None) -> frozenset[str]:
        """The scopes of the key in an Authorization value; 401 when there is
        no key or an unknown one."""
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
        return scopes
