"""The gunicorn worker of `fstore serve`: gunicorn's sync worker, except that
the errors gunicorn answers itself — a request line too long (414), headers
too large (431), a request it cannot parse or a bad Content-Length (400), an
application crash it catches (500) — are JSON `{"title", "description"}`
like every other fstore error, not gunicorn's HTML page.

gunicorn writes those pages with `gunicorn.util.write_error`; this module
replaces it in the worker process (where it is imported as the worker class),
keeping gunicorn's own choice of status and message.
"""
from __future__ import annotations

import json

from gunicorn import util
from gunicorn.workers.sync import SyncWorker

_HINTS = {
    400: "the request could not be read as HTTP/1.1 (request line, headers, Content-Length or chunked framing); "
         "send a well-formed request",
    403: "the request was refused",
    414: "the request line is too long; send large inputs in a JSON body (POST)",
    417: "the Expect header is not supported; send the request without it",
    431: "the request headers are too large; send fewer or shorter headers",
    501: "this Transfer-Encoding is not supported; send the body with a Content-Length",
}


def write_json_error(sock, status_int: int, reason: str, mesg: str) -> None:
    hint = _HINTS.get(status_int, "the server failed on this request; the log has the details")
    body = json.dumps({"title": reason, "description": f"{mesg}: {hint}" if mesg else hint}).encode()
    head = (f"HTTP/1.1 {status_int} {reason}\r\nConnection: close\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode("latin-1")
    util.write_nonblock(sock, head + body)


util.write_error = write_json_error


class JsonErrorSyncWorker(SyncWorker):
    """gunicorn's SyncWorker (see the module docstring)."""
