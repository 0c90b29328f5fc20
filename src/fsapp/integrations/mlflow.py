"""MLflow: training sets logged with the feature versions they were built
from, and models that look their features up in fstore when they predict.

    import mlflow
    from fsapp.integrations import mlflow as fsmlflow

    train = store.get_historical_features(labels, feature_service="fraud_v1")
    with mlflow.start_run():
        fsmlflow.log_training_set(train, label="is_fraud")
        X, y = fsmlflow.training_data(train, label="is_fraud")
        info = fsmlflow.log_model(LogisticRegression().fit(X, y), training_set=train,
                                  store="http://127.0.0.1:9094", name="fraud")
    # mlflow models serve -m <info.model_uri> --env-manager local
    # POST /invocations {"inputs": {"user_id": [1, 2]}} -> predictions from live features

    fsmlflow.models_using("user_txn:amount_24h")      # which logged models read this feature

What goes where (tag names are a contract: `models_using` and `fstore lineage
--models` search them) is in docs/integrations.md. Needs `pip install
'fstore[mlflow]'` (mlflow-skinny >= 3; a sqlite:// tracking store also needs
SQLAlchemy and alembic)."""
from __future__ import annotations

import json
import os
import tempfile
import warnings

import mlflow

from fsapp.integrations import IntegrationError
from fsapp.integrations.training import (feature_frame, matching_refs, provenance_of, store_location,
                                         training_data, training_set_record)

__all__ = ["log_training_set", "log_model", "training_data", "feature_frame", "models_using", "logged_models",
           "TAG_MARKER", "TAG_FEATURES", "TAG_SERVICE"]

TAG_MARKER = "fstore.lineage"  # "1" on every model log_model logs: what models_using searches for
TAG_FEATURES = "fstore.features"  # the pinned refs, comma-separated, in column order
TAG_SERVICE = "fstore.feature_service"
TAG_COLUMNS = "fstore.columns"
TAG_SCHEMA = "fstore.schema"
TAG_STORE = "fstore.store"
ARTIFACT = "fstore/training_set.json"
_TAG_MAX = 8000  # MLflow's limit on a tag value; the full record is also an artifact


def _clip(text: str) -> str:
    return text if len(text) <= _TAG_MAX else text[:_TAG_MAX - 40] + f"... (full list in {ARTIFACT})"


def log_training_set(training_set, *, label: str | None = None, name: str | None = None,
                     context: str = "training") -> dict:
    """Logs `training_set` (the result of `get_historical_features`) to the
    active run: an MLflow dataset input (pandas, with MLflow's digest; the
    label column as its target), params with the feature service, label,
    label source, time range and row count, tags with the pinned feature
    references and the schema, and the whole record as the artifact
    `fstore/training_set.json`. Returns the record."""
    run = mlflow.active_run()
    if run is None:
        raise IntegrationError("log_training_set needs an active MLflow run: call it inside "
                               "`with mlflow.start_run():`")
    record = training_set_record(training_set, label)
    df = training_set.to_arrow().to_pandas()
    source = record["label_source"] if os.path.isabs(record["label_source"]) else None
    with warnings.catch_warnings():  # MLflow's hint on integer columns is about its own schema inference
        warnings.filterwarnings("ignore", message=".*Inferred schema contains integer", category=UserWarning)
        dataset = mlflow.data.from_pandas(df, source=source, targets=label,
                                          name=name or record["feature_service"] or "fstore_training_set")
    mlflow.log_input(dataset, context=context, tags={TAG_SERVICE: record["feature_service"] or ""})
    prefix = "fstore." if context == "training" else f"fstore.{context}."
    mlflow.log_params({f"{prefix}{k}": "" if record[k] is None else record[k]
                       for k in ("feature_service", "label", "label_source", "time_start", "time_end", "rows")})
    mlflow.set_tags({prefix + "features": _clip(",".join(record["features"])),
                     prefix + "columns": _clip(",".join(record["columns"])),
                     prefix + "schema": _clip(json.dumps(record["schema"])),
                     prefix + "dataset_digest": dataset.digest})
    mlflow.log_dict(record, ARTIFACT if context == "training" else f"fstore/{context}_set.json")
    return record


def _provenance(training_set, feature_service, store):
    if training_set is not None:
        prov = provenance_of(training_set)
        if feature_service is not None and feature_service != prov.feature_service:
            raise IntegrationError(f"feature_service={feature_service!r} but the training set was built from "
                                   f"{prov.feature_service or 'a list of features'}; give one of them")
        return prov
    if feature_service is None:
        raise IntegrationError("log_model needs training_set= (the result of get_historical_features) or "
                               "feature_service= (with store=) to know which features the model reads")
    if store is None:
        raise IntegrationError(f"log_model(feature_service={feature_service!r}) needs store= (an `fstore serve` "
                               "URL or a repo path) to resolve the service's features")
    from fsapp.integrations.training import open_store
    from fsapp.registry.errors import NotFoundError
    from fsapp.sdk.provenance import training_provenance

    loc = store_location(store)
    handle = store if hasattr(store, "describe") else open_store(**loc)
    try:
        try:
            entry = handle.describe(feature_service)
        except NotFoundError:
            known = ", ".join(s["name"] for s in handle.list_feature_services()) or "none"
            raise IntegrationError(f"no feature service {feature_service!r} in {loc['url'] or loc['repo']} "
                                   f"(registered services: {known}); `fstore apply` it or fix the name") from None
        if entry["kind"] != "feature_service":
            raise IntegrationError(f"{feature_service!r} is a {entry['kind']}, not a feature service")
        return training_provenance(entry["resolved"]["features"], feature_service, False, None, handle.describe)
    finally:
        if handle is not store:
            handle.close()


def _signature(prov):
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    kinds = {"BIGINT": "long", "INTEGER": "long", "INT": "long", "SMALLINT": "long", "TINYINT": "long",
             "DOUBLE": "double", "FLOAT": "double", "REAL": "double", "BOOLEAN": "boolean", "VARCHAR": "string"}
    cols = [ColSpec(kinds.get(t.upper(), "string"), n) for n, t in list(prov.keys) + list(prov.request_columns)]
    return ModelSignature(inputs=Schema(cols))


def _inner(model, tmp: str) -> tuple[dict, object]:
    """(artifacts, the model kept in the wrapper): an MLflow model URI is
    loaded by pyfunc; a scikit-learn model is saved with MLflow's sklearn
    flavor (so pyfunc loads it as any sklearn model); any other object with
    predict() is pickled with the wrapper."""
    if isinstance(model, str):
        return {"model": model}, None
    if type(model).__module__.split(".")[0] == "sklearn":
        import mlflow.sklearn

        path = os.path.join(tmp, "model")
        # cloudpickle, not MLflow's default skops: the wrapper itself is cloudpickled (a PythonModel
        # object), so skops would add a dependency and refuse tree models without adding any safety
        mlflow.sklearn.save_model(model, path, pip_requirements=[],
                                  serialization_format=mlflow.sklearn.SERIALIZATION_FORMAT_CLOUDPICKLE)
        return {"model": path}, None
    if not callable(getattr(model, "predict", None)):
        raise IntegrationError(f"cannot log a {type(model).__name__}: give a model with predict(X) (scikit-learn "
                               "or similar) or the URI of an MLflow model (runs:/..., models:/...)")
    return {}, model


def _requirements(model) -> list[str]:
    """Pinned as installed, so MLflow need not infer them. fstore itself is
    left out: the name `fstore` on PyPI is another project, so an MLflow-made
    environment must get fstore from pip_requirements=[<wheel or path>];
    `--env-manager local` serves with the fstore installed where it runs."""
    from importlib.metadata import PackageNotFoundError, version

    reqs = []
    for dist in ("mlflow-skinny", "scikit-learn", "pandas", "pyarrow"):
        if dist == "scikit-learn" and type(model).__module__.split(".")[0] != "sklearn":
            continue
        try:
            reqs.append(f"{dist}=={version(dist)}")
        except PackageNotFoundError:
            continue
    return reqs


def log_model(model, *, training_set=None, feature_service: str | None = None, store=None, name: str = "model",
              fill_na=None, registered_model_name: str | None = None, **log_kwargs):
    """Logs `model` wrapped in a pyfunc that, given entity keys (and the
    request columns of on-demand features), reads the features it was
    trained on from fstore — the pinned versions, in the training set's
    column order, nulls handled by `fill_na` as in `training_data` — then
    predicts. Serve it with `mlflow models serve -m URI --env-manager local`.

    training_set / feature_service: what the model was trained on (the
    training set records the exact versions; a service alone is resolved now,
    against `store`). store: where the served model reads features: an
    `fstore serve` URL (what a served model should use) or a repo path
    (embedded, one process); it can be changed when loading
    (model_config={"fstore_url": ...}, or $MLFLOW_PYFUNC_INFERENCE_CONFIG).
    model: scikit-learn (saved with MLflow's sklearn flavor), any object with
    predict(X), or an MLflow model URI. Returns MLflow's ModelInfo; its
    logged model is tagged with the features (see `models_using`)."""
    with warnings.catch_warnings():  # defining the PythonModel subclass: see the same filter below
        warnings.filterwarnings("ignore", message=".*type hints to the `predict`", category=UserWarning)
        from fsapp.integrations.pyfunc import FeatureLookupModel

    prov = _provenance(training_set, feature_service, store)
    loc = store_location(store) if store is not None else {"url": "", "repo": ""}
    record = training_set_record(training_set) if training_set is not None else None
    tags = {TAG_MARKER: "1", TAG_FEATURES: _clip(",".join(prov.features)), TAG_SERVICE: prov.feature_service or "",
            TAG_COLUMNS: _clip(",".join(prov.columns)), TAG_STORE: loc["url"] or loc["repo"]}
    params = {f"fstore.{k}": record[k] for k in ("rows", "time_start", "time_end", "label_source")
              if record is not None and record[k] is not None}
    with tempfile.TemporaryDirectory(prefix="fstore-model-") as tmp:
        artifacts, kept = _inner(model, tmp)
        config = {"fstore_url": loc["url"], "fstore_repo": loc["repo"]}
        log_kwargs.setdefault("pip_requirements", _requirements(model))
        with warnings.catch_warnings():
            # the wrapper has an explicit signature (the entity keys), so MLflow's hints to add
            # predict() type hints or an input example (which would need a live store) do not apply
            warnings.filterwarnings("ignore", message=".*(type hints to the `predict`|input example was not)",
                                    category=UserWarning)
            return mlflow.pyfunc.log_model(
                name=name, python_model=FeatureLookupModel(prov.to_dict(), fill_na, kept),
                artifacts=artifacts or None, model_config=config, signature=_signature(prov),
                registered_model_name=registered_model_name, tags={**tags, **log_kwargs.pop("tags", {})},
                params={**params, **log_kwargs.pop("params", {})}, **log_kwargs)


# ---- reverse lineage: which logged models read a feature

def logged_models(tracking_uri: str | None = None, experiment_ids: list[str] | None = None) -> list[dict]:
    """Every model `log_model` logged (in the given experiments, default
    all): {"model_id", "name", "model_uri", "run_id", "experiment_id",
    "feature_service", "features"}."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    if experiment_ids is None:
        experiment_ids, token = [], None
        while True:
            page = client.search_experiments(page_token=token)
            experiment_ids += [e.experiment_id for e in page]
            token = page.token
            if not token:
                break
    out, token = [], None
    while experiment_ids:
        page = client.search_logged_models(experiment_ids=list(experiment_ids),
                                           filter_string=f"tags.`{TAG_MARKER}` = '1'", page_token=token)
        for m in page:
            features = [r for r in m.tags.get(TAG_FEATURES, "").split(",") if r and "(full list in" not in r]
            out.append({"model_id": m.model_id, "name": m.name, "model_uri": m.model_uri, "run_id": m.source_run_id,
                        "experiment_id": m.experiment_id, "feature_service": m.tags.get(TAG_SERVICE) or None,
                        "features": features})
        token = page.token
        if not token:
            break
    return sorted(out, key=lambda m: m["model_id"])


def models_using(name: str, *, tracking_uri: str | None = None, experiment_ids: list[str] | None = None) -> list[dict]:
    """The logged models that read `name`: a feature (view:feature, or
    view@vN:feature for one version), a view (any of its features) or a
    feature service. Each has "uses": the matching pinned references."""
    out = []
    for m in logged_models(tracking_uri, experiment_ids):
        uses = matching_refs(name, m["features"], m["feature_service"])
        if uses:
            out.append({**m, "uses": uses})
    return out
