"""Integrations with the tools models are trained and served with, each
an optional extra that the core never imports:

- `fsapp.integrations.mlflow` (`pip install 'fstore[mlflow]'`): training sets
  logged to MLflow with their feature versions; models logged with
  `log_model` look their features up in fstore when they predict.
- `fsapp.integrations.kfp` (`pip install 'fstore[kfp]'`): Kubeflow Pipelines
  v2 components (materialize, training set to Parquet, push Parquet).

They depend on the SDK (`fsapp.FeatureStore`, `fsapp.Client`), never the
reverse. See docs/integrations.md."""
from __future__ import annotations

from fscore.errors import FStoreError


class IntegrationError(FStoreError, RuntimeError):
    """An integration was used in a way that cannot work (no active run, a
    result that is not a training set...); the message says what to do."""
