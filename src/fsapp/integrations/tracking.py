"""Where fstore finds the models that read its features (reverse lineage
for `fstore lineage --models` and the lineage endpoint). Imports neither
MLflow nor pyarrow: a gunicorn worker loads it at start."""
from __future__ import annotations

import os

from fsapp.integrations import IntegrationError


def tracking_uri_for(repo=None, given: str | None = None, use_env: bool = True) -> str | None:
    """The MLflow tracking URI whose models `fstore lineage --models` and the
    lineage endpoint list: `given`, else fstore.yaml's `mlflow.tracking_uri`,
    else (with `use_env`) $MLFLOW_TRACKING_URI; None when none is set."""
    if given:
        return given
    section = (repo.config.get("mlflow") or {}) if repo is not None else {}
    if not isinstance(section, dict):
        raise IntegrationError(f"{repo.config_where('mlflow')}: 'mlflow' is a section, e.g. "
                               "mlflow: {tracking_uri: sqlite:////abs/path/mlflow.db}")
    uri = section.get("tracking_uri")
    if uri is not None and not isinstance(uri, str):
        raise IntegrationError(f"{repo.config_where('mlflow', 'tracking_uri')}: mlflow.tracking_uri is a URI "
                               f"(e.g. sqlite:////abs/path/mlflow.db or http://host:5000), got {uri!r}")
    return uri or (os.environ.get("MLFLOW_TRACKING_URI") if use_env else None) or None


def model_lister(tracking_uri: str):
    """A callable listing the models logged with `log_model` at
    `tracking_uri`; MLflow is imported on the first call, not before. Any
    failure is an IntegrationError naming the URI."""
    def list_models() -> list[dict]:
        try:
            from fsapp.integrations.mlflow import logged_models
        except ImportError as e:
            raise IntegrationError(f"listing models needs MLflow ({e}): pip install 'fstore[mlflow]'") from None
        try:
            return logged_models(tracking_uri)
        except Exception as e:  # noqa: BLE001 - MLflow's failures (a bad URI, a server down) come in many classes
            raise IntegrationError(f"could not list the models logged at {tracking_uri}: "
                                   f"{type(e).__name__}: {e}") from e
    return list_models
