"""The web UI: static HTML, CSS and JavaScript (no build step, no framework,
nothing fetched from another origin) served at /ui by the same Falcon app
as the REST API, which is all the pages read (docs/ui.md).

The files are read once, when the app is made. Asset URLs carry a digest of
their content (`/ui/static/app.js?v=...`), so a browser may keep them for a
year and still never runs an old script against a new page; the page itself
is revalidated on each load. Every answer carries a Content-Security-Policy
that allows this origin only: no script, style, image or request elsewhere.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import falcon

STATIC_DIR = Path(__file__).parent / "static"
TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
         ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml"}
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "font-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
IMMUTABLE = "public, max-age=31536000, immutable"


def _secure(resp: falcon.Response) -> None:
    resp.set_header("Content-Security-Policy", CSP)
    resp.set_header("X-Content-Type-Options", "nosniff")
    resp.set_header("Referrer-Policy", "no-referrer")


class Assets:
    """The files of STATIC_DIR by name (a fixed set: no path from a URL ever
    reaches the file system) and the digest that versions them."""

    def __init__(self, directory: Path = STATIC_DIR):
        self.files: dict[str, tuple[bytes, str]] = {}
        for path in sorted(directory.iterdir()):
            if path.is_file() and path.suffix in TYPES and path.name != "index.html":
                self.files[path.name] = (path.read_bytes(), TYPES[path.suffix])
        digest = hashlib.sha256()
        for name, (data, _) in self.files.items():
            digest.update(name.encode() + b"\0" + data)
        self.version = digest.hexdigest()[:16]
        page = (directory / "index.html").read_text(encoding="utf-8")
        self.page = page.replace("{{version}}", self.version).encode()
        self.page_etag = hashlib.sha256(self.page).hexdigest()[:16]


class UiPage:
    """GET /ui: the one page; the views are routes after its '#'."""
    scope = None  # the page holds no data; what it reads from the API needs a key

    def __init__(self, assets: Assets):
        self.assets = assets

    def on_get(self, req, resp):
        _secure(resp)
        resp.etag = self.assets.page_etag
        resp.cache_control = ["no-cache"]
        if req.if_none_match and self.assets.page_etag in req.if_none_match:  # falcon's ETags compare as text
            resp.status = falcon.HTTP_304
            return
        resp.content_type = TYPES[".html"]
        resp.data = self.assets.page


class UiAsset:
    """GET /ui/static/{name}"""
    scope = None

    def __init__(self, assets: Assets):
        self.assets = assets

    def on_get(self, req, resp, name):
        found = self.assets.files.get(name)
        if found is None:
            raise falcon.HTTPNotFound(title="Not found", description=f"the web UI has no file {name!r}")
        _secure(resp)
        data, content_type = found
        # the page asks for ?v=<this digest>: such a URL's content never changes
        current = req.get_param("v") == self.assets.version
        resp.cache_control = [IMMUTABLE] if current else ["no-cache"]
        resp.content_type = content_type
        resp.data = data


class UiRedirect:
    """GET / and /ui/: to /ui, where the page is (a person who types the
    server's address lands on the UI, not on a JSON 404)."""
    scope = None

    def on_get(self, req, resp):
        raise falcon.HTTPFound("/ui")


def add_ui_routes(app: falcon.App) -> None:
    assets = Assets()
    app.add_route("/ui", UiPage(assets))
    app.add_route("/ui/static/{name}", UiAsset(assets))
    app.add_route("/ui/", UiRedirect())
    app.add_route("/", UiRedirect())
