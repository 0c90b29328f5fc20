"""The peer port of a Kafka group node (`kafka.assign: group`): the same REST
app as the gunicorn workers, on threads, for the reads other nodes forward
here (fsapp.api.forwarding).

Why not the main port: its gunicorn workers are synchronous. Two nodes whose
workers are all busy forwarding reads to each other would each wait for the
other's free worker — a deadlock that only the forwarding timeout breaks
(measured: 5 reads/s instead of ~1,000 with one worker per node). A thread per
forwarded read here cannot be starved that way: it reads this node's shared
tables and answers, it never forwards again (`X-Fstore-Local`).

    python -m fsapp.serve.peer --host H --port P   (the supervisor starts it;
    FSTORE_REPO and FSTORE_ENGINE_SOCKET as for the workers)
"""
from __future__ import annotations

import argparse
import socketserver
import sys
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server


class _ThreadingWSGIServer(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True
    allow_reuse_address = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - the stdlib's name
        pass


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="fsapp.serve.peer")
    ap.add_argument("--host", required=True)
    ap.add_argument("--port", type=int, required=True)
    a = ap.parse_args(argv)
    from fsapp.serve.wsgi import build_application

    server = make_server(a.host, a.port, build_application(), server_class=_ThreadingWSGIServer,
                         handler_class=_QuietHandler)
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
