"""What the integrations share, with no MLflow or KFP import: the record of
a training set (its lineage, logged as MLflow tags or KFP artifact
metadata), the feature matrix a model sees (the same function at training
and at serving time, so the two cannot drift), where a model finds its
store, and which feature a model's pinned references match."""
from __future__ import annotations

import datetime as dt
import os
import re

import pyarrow as pa
import pyarrow.compute as pc

from fsapp.integrations import IntegrationError
from fsapp.sdk.provenance import Provenance

TIMESTAMP_COLUMN = "event_timestamp"
_NUMERIC = ("BIGINT", "INTEGER", "INT", "SMALLINT", "TINYINT", "DOUBLE", "FLOAT", "REAL", "DECIMAL")


def provenance_of(training_set) -> Provenance:
    prov = getattr(training_set, "provenance", None)
    if not isinstance(prov, Provenance):
        raise IntegrationError(f"{type(training_set).__name__} is not an fstore training set: give the result of "
                               "store.get_historical_features(...) (FeatureStore or Client), which knows the "
                               "feature versions it was built from")
    return prov


def _iso(value) -> str | None:
    if value is None:
        return None
    if isinstance(value, dt.datetime):
        d = value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)
        return d.astimezone(dt.timezone.utc).isoformat().replace("+00:00", "Z")
    return str(value)


def training_set_record(training_set, label: str | None = None) -> dict:
    """The lineage of a training set as JSON-ready data: pinned feature
    references in column order, the feature service, the label column and
    where the label rows came from, their time range, row count and schema."""
    prov = provenance_of(training_set)
    table: pa.Table = training_set.to_arrow()
    if label is not None and label not in table.column_names:
        raise IntegrationError(f"label {label!r} is not a column of the training set (it has "
                               f"{', '.join(table.column_names)}); pass the entity_df column that holds the label")
    start = end = None
    if TIMESTAMP_COLUMN in table.column_names and table.num_rows:
        bounds = pc.min_max(table.column(TIMESTAMP_COLUMN))
        start, end = bounds["min"].as_py(), bounds["max"].as_py()
    return {
        "features": list(prov.features),
        "columns": list(prov.columns),
        "feature_service": prov.feature_service,
        "label": label,
        "label_source": prov.label_source,
        "time_start": _iso(start),
        "time_end": _iso(end),
        "rows": table.num_rows,
        "schema": {f.name: str(f.type) for f in table.schema},
        "provenance": prov.to_dict(),
    }


def feature_frame(columns: dict, prov: Provenance, fill_na=None):
    """The model's input: one pandas column per feature, in the training
    set's column order and under its names. Numeric features are float64
    (a missing value is NaN, as in a training set read with `to_df()`); then
    `fill_na` (a value, or {column: value}) replaces missing values, the
    same way at training time (`training_data`) and at serving time."""
    import pandas as pd

    missing = [c for c in prov.columns if c not in columns]
    if missing:
        raise IntegrationError(f"feature column(s) {missing} are missing; the model was trained on "
                               f"{', '.join(prov.columns)}")
    frame = {}
    for col, typ in zip(prov.columns, prov.types):
        values = columns[col]
        if typ.split("(")[0].upper() in _NUMERIC:
            frame[col] = pd.to_numeric(pd.Series(values, dtype="object" if isinstance(values, list) else None),
                                       errors="coerce").astype("float64")
        else:
            frame[col] = pd.Series(values, dtype="object") if isinstance(values, list) else values
    df = pd.DataFrame(frame)
    if fill_na is not None:
        df = df.fillna(fill_na)
        for col, typ in zip(prov.columns, prov.types):  # fillna on object columns keeps 'object'; bool stays bool
            if typ.upper() == "BOOLEAN" and not df[col].isna().any():
                df[col] = df[col].astype(bool)
    return df


def training_data(training_set, label: str | None = None, fill_na=None):
    """(X, y) for fitting: X is `feature_frame` over the training set (the
    columns and null handling the logged model serves with), y the label
    column (None without `label`)."""
    prov = provenance_of(training_set)
    table = training_set.to_arrow()
    if label is not None and label not in table.column_names:
        raise IntegrationError(f"label {label!r} is not a column of the training set (it has "
                               f"{', '.join(table.column_names)})")
    cols = {c: table.column(c).to_pylist() for c in prov.columns if c in table.column_names}
    X = feature_frame(cols, prov, fill_na)
    y = table.column(label).to_pandas() if label is not None else None
    return X, y


# ---- where a model finds its store

def store_location(store) -> dict:
    """{"url": ...} or {"repo": ...} from a URL, a repo path, a Client or a
    FeatureStore: what a logged model keeps to open its store again."""
    from fsapp.sdk.client import Client
    from fsapp.sdk.embedded import FeatureStore

    if isinstance(store, Client):
        return {"url": store.url, "repo": ""}
    if isinstance(store, FeatureStore):
        return {"url": "", "repo": str(store.repo.root.resolve())}
    if isinstance(store, (str, os.PathLike)):
        text = os.fspath(store)
        if re.match(r"^https?://", text):
            return {"url": text.rstrip("/"), "repo": ""}
        if not os.path.isfile(os.path.join(text, "fstore.yaml")):
            raise IntegrationError(f"store {text!r} is neither an http(s):// URL of `fstore serve` nor a repo "
                                   "directory with an fstore.yaml")
        return {"url": "", "repo": os.path.abspath(text)}
    raise IntegrationError(f"store must be an `fstore serve` URL, a repo path, a Client or a FeatureStore, "
                           f"not {type(store).__name__}")


def open_store(url: str = "", repo: str = ""):
    """A Client for `url`, else the embedded FeatureStore of `repo`. The
    API key of a Client comes from $FSTORE_API_KEY, never from the model."""
    if url:
        from fsapp.sdk.client import Client
        return Client(url, api_key=os.environ.get("FSTORE_API_KEY") or None)
    if repo:
        from fsapp.sdk.embedded import FeatureStore
        return FeatureStore(repo)
    raise IntegrationError("the model has no store: log it with store=URL or a repo path, or give one when "
                           "loading it (model_config={\"fstore_url\": \"http://HOST:9094\"})")


# ---- which features a model uses

_QUERY = re.compile(r"^([A-Za-z_]\w*)(?:@v(\d+))?(?::([A-Za-z_]\w*|\*))?$")


def matching_refs(query: str, refs: list[str], feature_service: str | None = None) -> list[str]:
    """The pinned refs ("view@vN:feature") that `query` names: a view, a
    view@vN, view:feature, view@vN:feature, or the feature service itself
    (all of them)."""
    q = query.strip()
    if feature_service and q == feature_service:
        return list(refs)
    m = _QUERY.match(q)
    if not m:
        raise IntegrationError(f"cannot read {query!r}: give view, view@vN, view:feature, view@vN:feature or a "
                               "feature service name")
    view, version, feature = m.groups()
    out = []
    for ref in refs:
        rview, _, rfeature = ref.partition(":")
        rname, _, rversion = rview.partition("@v")
        if rname == view and (version is None or version == rversion) and feature in (None, "*", rfeature):
            out.append(ref)
    return out

