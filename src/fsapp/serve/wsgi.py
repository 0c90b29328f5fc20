"""gunicorn entry point of `fstore serve` (`fsapp.serve.wsgi:application`).
Configured by the supervisor's environment: FSTORE_REPO, FSTORE_ENGINE_SOCKET,
PROMETHEUS_MULTIPROC_DIR (fsapp.serve.shared_metrics) and, when `fstore serve`
has API keys, FSTORE_API_KEYS_FILE (`--api-keys-file` or the repo's
`auth.api_keys_file`; a worker started without it reads the repo's) and
FSTORE_UI (`off` leaves the web UI out; `--ui` / `online.ui`). The older
FSTORE_API_KEYS (`token=scope[,scope];token=...`) still works."""
from __future__ import annotations

import gc
import os

from fsapp.api.app import create_app
from fsapp.api.auth import api_keys_for
from fsapp.api.deferred import AFTER_RESPONSE
from fsapp.integrations.tracking import model_lister, tracking_uri_for
from fsapp.registry.repo import Repo
from fsapp.serve.feature_log import FeatureLogConfig, FeatureLogger
from fsapp.serve.shared_metrics import SharedHttpMetrics
from fsapp.serve.worker import WorkerBackend


class AfterResponse:
    """WSGI wrapper: the request's deferred tasks (fsapp.api.deferred), then
    `hook()` if given, run after each response has been written (the server
    calls the body's `close()` once it has sent it), so bookkeeping (metrics,
    the feature log) never delays an answer."""

    def __init__(self, app, hook=None):
        self.app, self.hook = app, hook or _nothing

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


def _nothing() -> None:
    pass


def build_application():
    repo = Repo(os.environ["FSTORE_REPO"])
    log_cfg = FeatureLogConfig.from_repo(repo)
    logger = FeatureLogger(log_cfg, (repo.config.get("kafka") or {}).get("bootstrap_servers")) if log_cfg else None
    backend = WorkerBackend(str(repo.data_dir / "engine"), str(repo.registry_path), os.environ["FSTORE_ENGINE_SOCKET"],
                            feature_logger=logger)
    metrics = SharedHttpMetrics(str(repo.data_dir / "metrics"))
    uri = tracking_uri_for(repo, use_env=False)  # only a repo that names its MLflow store lists models
    app = create_app(backend, api_keys=api_keys_for(repo), http_metrics=metrics,
                     ui=os.environ.get("FSTORE_UI", "on") != "off", models=model_lister(uri) if uri else None)
    return AfterResponse(app)


application = build_application() if "FSTORE_REPO" in os.environ else None
if application is not None:
    # PERF: the modules and registry loaded above are never garbage: keep the
    # collector from walking them on every full collection while serving
    # (benches/bench_serving.py, worker CPU per request)
    gc.collect()
    gc.freeze()
