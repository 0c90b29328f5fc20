"""The floor for bench_serving: a Falcon endpoint under the same gunicorn
settings as `fstore serve` that reads the request body and returns a fixed
JSON body of the same size as our answer, without any lookup.

    FSTORE_FLOOR_DIR=dir gunicorn --workers 2 --max-requests 0 benches.floor_app:app
    POST /floor/{name}  -> the bytes of dir/{name}.json
"""
from __future__ import annotations

import os

import falcon


class Fixed:
    def __init__(self, bodies: dict[str, bytes]):
        self.bodies = bodies

    def on_post(self, req, resp, name):
        req.bounded_stream.read()
        body = self.bodies.get(name)
        if body is None:
            raise falcon.HTTPNotFound()
        resp.data = body
        resp.content_type = falcon.MEDIA_JSON


def create_app(folder: str) -> falcon.App:
    bodies = {f[:-5]: open(os.path.join(folder, f), "rb").read() for f in os.listdir(folder) if f.endswith(".json")}
    app = falcon.App()
    app.add_route("/floor/{name}", Fixed(bodies))
    return app


app = create_app(os.environ["FSTORE_FLOOR_DIR"]) if "FSTORE_FLOOR_DIR" in os.environ else None
