"""The engine socket protocol: one request, one response, each a frame

    frame := u32 header_len | header JSON | u32 body_len | body bytes

The header carries the operation and its JSON arguments; the body carries
bulk bytes (an Arrow IPC stream for pushes and training sets). Errors travel
as {"ok": false, "error": {"type": ..., "message": ...}} and are raised again
on the worker side as the same exception class, so the API maps them to HTTP
statuses exactly as in the embedded case.
"""
from __future__ import annotations

import json
import socket
import struct
import threading

from fscore import errors as core_errors

from fsapp import errors as app_errors
from fsapp.engine import errors as engine_errors
from fsapp.engine.errors import EngineUnavailable, OutcomeUnknown
from fsapp.registry import errors as registry_errors

_U32 = struct.Struct("<I")
MAX_FRAME = 1 << 30


def _error_classes() -> dict[str, type]:
    out = {}
    for mod in (core_errors, engine_errors, registry_errors, app_errors):
        for name in dir(mod):
            obj = getattr(mod, name)
            if isinstance(obj, type) and issubclass(obj, Exception):
                out[name] = obj
    return out


ERRORS = _error_classes()
__all__ = ["EngineClient", "EngineUnavailable", "OutcomeUnknown", "send_frame", "recv_frame"]


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = sock.recv_into(view[got:], n - got)
        if k == 0:
            raise ConnectionError("engine socket closed mid-frame")
        got += k
    return bytes(buf)


def send_frame(sock: socket.socket, header: dict, body: bytes = b"") -> None:
    h = json.dumps(header, separators=(",", ":"), default=str).encode()
    sock.sendall(_U32.pack(len(h)) + h + _U32.pack(len(body)) + body)


def recv_frame(sock: socket.socket) -> tuple[dict, bytes]:
    (hn,) = _U32.unpack(_recv_exact(sock, 4))
    if hn > MAX_FRAME:
        raise ConnectionError(f"frame header of {hn} bytes is over the limit")
    header = json.loads(_recv_exact(sock, hn))
    (bn,) = _U32.unpack(_recv_exact(sock, 4))
    if bn > MAX_FRAME:
        raise ConnectionError(f"frame body of {bn} bytes is over the limit")
    return header, _recv_exact(sock, bn) if bn else b""


def error_header(exc: BaseException) -> dict:
    return {"ok": False, "error": {"type": type(exc).__name__, "message": str(exc)}}


def raise_error(header: dict) -> None:
    err = header.get("error") or {}
    cls = ERRORS.get(err.get("type"), core_errors.FStoreError)
    try:
        exc = cls(err.get("message", "engine error"))
    except TypeError:
        exc = core_errors.FStoreError(err.get("message", "engine error"))
    raise exc


class EngineClient:
    """A worker's connection to the engine; one socket per thread.

    `timeout` stays below gunicorn's worker timeout (30 s), so a slow engine
    gives the client a JSON 503 "outcome unknown" rather than a killed
    worker. A request that may not be repeated blindly is sent once: if the
    connection breaks after it was sent, OutcomeUnknown says so (pushes carry
    an idempotency key, which makes their retry safe)."""

    def __init__(self, path: str, timeout: float = 20.0):
        self.path = path
        self.timeout = timeout
        self._local = threading.local()

    def _sock(self) -> socket.socket:
        s = getattr(self._local, "sock", None)
        if s is None:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(self.timeout)
            try:
                s.connect(self.path)
            except OSError as e:
                s.close()
                raise EngineUnavailable(f"the engine is not reachable ({e.strerror or e}); it may be restarting: "
                                        "nothing was applied, retry shortly") from None
            self._local.sock = s
        return s

    def call(self, op: str, body: bytes = b"", *, repeatable: bool = True, timeout: float | None = None,
             **args) -> tuple[dict, bytes]:
        """One request. A cached connection the engine closed (it restarted)
        is retried once on a new one when the request is `repeatable` (a
        read, or a write carrying an idempotency key). `timeout`: this call's,
        default the client's."""
        for attempt in (0, 1):
            s = self._sock()
            s.settimeout(self.timeout if timeout is None else timeout)
            sent = False
            try:
                send_frame(s, {"op": op, "args": args}, body)
                sent = True
                header, data = recv_frame(s)
                break
            except (ConnectionError, OSError) as e:
                self.close()
                timed_out = isinstance(e, TimeoutError)
                if attempt or timed_out or (sent and not repeatable):
                    if not sent:
                        raise EngineUnavailable(f"lost the engine connection before sending {op}; nothing was "
                                                "applied, retry shortly") from None
                    raise OutcomeUnknown(f"the engine did not answer {op} ({'timed out' if timed_out else e}); "
                                         "outcome unknown: retry with the same Idempotency-Key") from None
        if not header.get("ok"):
            raise_error(header)
        return header.get("result"), data

    def close(self) -> None:
        s = getattr(self._local, "sock", None)
        if s is not None:
            try:
                s.close()
            finally:
                self._local.sock = None
