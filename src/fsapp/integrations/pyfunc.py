"""The pyfunc `log_model` wraps a model in: it is what `mlflow models serve`
(and `mlflow.pyfunc.load_model`) runs. Given entity keys (and request
columns), it reads the model's pinned features online, builds the feature
matrix exactly as `training_data` does, and predicts with the inner model.

Errors a caller can fix come back as MLflow errors with a code the scoring
server turns into a status: a missing key column is 400, an unknown
feature or a refused read 400/404 with fstore's message, a store that does
not answer 503."""
from __future__ import annotations

import threading

import mlflow.pyfunc
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import (INVALID_PARAMETER_VALUE, RESOURCE_DOES_NOT_EXIST,
                                          TEMPORARILY_UNAVAILABLE)

from fsapp.integrations.training import feature_frame, open_store
from fsapp.sdk.provenance import Provenance


class FeatureLookupModel(mlflow.pyfunc.PythonModel):
    def __init__(self, provenance: dict, fill_na=None, model=None):
        self.provenance = provenance  # a dict: the pickle must not depend on the dataclass's layout
        self.fill_na = fill_na
        self.model = model  # kept here only when it is not an MLflow model artifact

    def load_context(self, context):
        self._prov = Provenance.from_dict(self.provenance)
        config = context.model_config or {}
        self._location = {"url": config.get("fstore_url") or "", "repo": config.get("fstore_repo") or ""}
        self._inner = self.model if self.model is not None else mlflow.pyfunc.load_model(context.artifacts["model"])
        self._store = None
        self._lock = threading.Lock()

    def _features_store(self):
        with self._lock:  # opened on first use: a store that is down does not stop the server from starting
            if self._store is None:
                self._store = open_store(**self._location)
            return self._store

    def lookup(self, model_input):
        """The feature matrix for the rows of `model_input` (a DataFrame of
        entity keys and request columns)."""
        prov = self._prov
        if not isinstance(model_input, pd.DataFrame):
            model_input = pd.DataFrame(model_input)
        needed = [k for k, _ in prov.keys] + [c for c, _ in prov.request_columns]
        missing = [c for c in needed if c not in model_input.columns]
        if missing:
            raise MlflowException(f"the request lacks the column(s) {missing}: the model looks its features up by "
                                  f"{', '.join(needed)}; send e.g. {{\"inputs\": {{\"{needed[0]}\": [...]}}}}",
                                  error_code=INVALID_PARAMETER_VALUE)
        entities = {c: [_plain(v) for v in model_input[c].tolist()] for c in needed}
        from fsapp.registry.errors import NotFoundError
        from fsapp.sdk.errors import ServiceUnavailable
        from fscore.errors import FStoreError

        try:
            resp = self._features_store().get_online_features(features=list(prov.features), entity_rows=entities,
                                                              full_feature_names=prov.full_feature_names)
        except ServiceUnavailable as e:
            raise MlflowException(f"the feature store did not answer: {e}", error_code=TEMPORARILY_UNAVAILABLE) from e
        except NotFoundError as e:
            raise MlflowException(f"the feature store has not the features this model was trained on: {e}",
                                  error_code=RESOURCE_DOES_NOT_EXIST) from e
        except (FStoreError, ValueError) as e:
            raise MlflowException(f"the feature store refused the read: {e}", error_code=INVALID_PARAMETER_VALUE) from e
        values = resp.to_dict()
        # online answers name features by their column; pinned refs ask for exactly the trained versions
        return feature_frame(values, prov, self.fill_na)

    # the hint is MLflow's "a DataFrame, infer no schema from me": inputs keep arriving as the scoring
    # server parsed them, and MLflow stops warning every user that logs this model
    def predict(self, context, model_input: pd.DataFrame, params=None):
        return self._inner.predict(self.lookup(model_input))


def _plain(v):
    return v.item() if hasattr(v, "item") else v
