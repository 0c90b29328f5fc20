"""gunicorn entry point of `fstore serve` (`fsapp.serve.wsgi:application`).
Configured by the supervisor through FSTORE_REPO and FSTORE_ENGINE_SOCKET;
FSTORE_API_KEYS (optional) is `token=scope[,scope];token=...`."""
from __future__ import annotations

import gc
import os

from fsapp.api.app import create_app
from fsapp.api.deferred import AFTER_RESPONSE
from fsapp.registry.repo import Repo
from fsapp.serve.feature_log import FeatureLogConfig, FeatureLogger
from fsapp.serve.shared_metrics import SharedHttpMetrics
from fsapp.serve.worker import WorkerBackend


def parse_api_keys(text: str) -> dict | None:
    if not text.strip():
        return None
    keys = {}
    for item in text.split(";"):
        token, _, scopes = item.strip().partition("=")
        if not token or not scopes:
            raise ValueError("FSTORE_API_KEYS must look like 'token1=read;token2=read,write'")
        keys[token] = scopes
    return keys


class AfterResponse:
    """WSGI wrapper: the request's deferred tasks (fsapp.api.deferred), then
    `hook()`, run after each response has been written (the server calls
    the body's `close()` once it has sent it), so bookkeeping (metrics, the
    feature log, the metrics snapshot) never delays an answer."""

    def __init__(self, app, hook):
        self.app, self.hook = app, hook

    def __call__(self, environ, start_response):
        tasks = environ[AFTER_RESPONSE] = []
        return _Closing(self.app(environ, start_response), tasks, self.hook)


class _Closing:
    __slots__ = ("body", "tasks", "hook")

    def __init__(self, body, tasks, hook):
        self.body, self.tasks, self.hook = body, tasks, hook

    def __iter__(self):
        return iter(self.body)

    def close(self):
        try:
            close = getattr(self.body, "close", None)
            if close is not None:
                close()
        finally:
            try:
                for fn, args in self.tasks:
                    fn(*args)
            finally:
                self.hook()


def build_application():
    repo = Repo(os.environ["FSTORE_REPO"])
    log_cfg = FeatureLogConfig.from_repo(repo)
    logger = FeatureLogger(log_cfg, (repo.config.get("kafka") or {}).get("bootstrap_servers")) if log_cfg else None
    backend = WorkerBackend(str(repo.data_dir / "engine"), str(repo.registry_path), os.environ["FSTORE_ENGINE_SOCKET"],
                            feature_logger=logger)
    metrics = SharedHttpMetrics(str(repo.data_dir / "metrics"))
    app = create_app(backend, api_keys=parse_api_keys(os.environ.get("FSTORE_API_KEYS", "")), http_metrics=metrics)
    return AfterResponse(app, metrics.upkeep)


application = build_application() if "FSTORE_REPO" in os.environ else None
if application is not None:
    # PERF: the modules and registry loaded above are never garbage: keep the
    # collector from walking them on every full collection while serving
    # (benches/bench_serving.py, worker CPU per request)
    gc.collect()
    gc.freeze()
