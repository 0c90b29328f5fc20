"""The work of the pipeline components (fsapp.integrations.kfp), as plain
functions over paths and a store location, with no KFP import: a KFP
component body only unpacks its artifacts and calls one of these, so the
steps run (and are tested) the same inside and outside a pipeline.

A training set written here is a Parquet file whose schema metadata carries
its lineage record (`fstore.training_set`), so the file alone is enough to
log it to MLflow later (`ParquetTrainingSet`)."""
from __future__ import annotations

import json
import re

import pyarrow as pa
import pyarrow.parquet as pq

from fsapp.integrations import IntegrationError
from fsapp.integrations.training import open_store, training_set_record
from fsapp.sdk.provenance import Provenance

PARQUET_KEY = b"fstore.training_set"


def _open(store: str):
    return open_store(url=store) if re.match(r"^https?://", store) else open_store(repo=store)


def _names(text: str) -> list[str] | None:
    names = [n.strip() for n in text.split(",") if n.strip()]
    return names or None


def materialize(store: str, start: str = "", end: str = "now", views: str = "") -> dict:
    """Recomputes online values as of `end` from the offline log (`start`
    empty: from the beginning); `views`: comma-separated names, empty: all."""
    handle = _open(store)
    try:
        return handle.materialize(start or None, end, _names(views))
    finally:
        handle.close()


def build_training_set(store: str, entities_path: str, out_path: str, *, feature_service: str = "",
                       features: str = "", label: str = "", full_feature_names: bool = False) -> dict:
    """Reads the entity rows (keys, event_timestamp, labels) from the Parquet
    file `entities_path`, builds the point-in-time training set from
    `feature_service` or `features` ("view:feature,..."), writes it to
    `out_path` as Parquet with its lineage record in the schema metadata,
    and returns that record."""
    if bool(feature_service) == bool(features):
        raise IntegrationError("give feature_service or features (view:feature,...), not both")
    entities = pq.read_table(entities_path)
    handle = _open(store)
    try:
        result = handle.get_historical_features(entities, _names(features), feature_service=feature_service or None,
                                                full_feature_names=full_feature_names)
        table = result.to_arrow()
        record = training_set_record(result, label or None)
    finally:
        handle.close()
    record["label_source"] = record["provenance"]["label_source"] = entities_path
    meta = dict(table.schema.metadata or {})
    meta[PARQUET_KEY] = json.dumps(record).encode()
    pq.write_table(table.replace_schema_metadata(meta), out_path)
    return record


def push_parquet(store: str, stream: str, path: str, batch_rows: int = 50_000) -> dict:
    """Pushes the events of the Parquet file `path` to `stream`, batch by
    batch (each durable when acknowledged); returns {"accepted", "late"}."""
    handle = _open(store)
    accepted = late = 0
    try:
        for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_rows):
            res = handle.push(stream, pa.Table.from_batches([batch]))
            accepted += res["accepted"]
            late += res["late"]
    finally:
        handle.close()
    return {"stream": stream, "accepted": accepted, "late": late}


class ParquetTrainingSet:
    """A training set read back from a file `build_training_set` wrote: it
    has `to_arrow()`, `provenance` and `record`, so `log_training_set`,
    `training_data` and `log_model` take it like the SDK's own result."""

    def __init__(self, path: str):
        self.path = path
        self._table = pq.read_table(path)
        raw = (self._table.schema.metadata or {}).get(PARQUET_KEY)
        if raw is None:
            raise IntegrationError(f"{path} has no fstore lineage in its metadata: write it with "
                                   "build_training_set (the training_set component)")
        self.record = json.loads(raw)
        self.provenance = Provenance.from_dict(self.record["provenance"])

    def to_arrow(self) -> pa.Table:
        return self._table.replace_schema_metadata(None)

    def __len__(self) -> int:
        return self._table.num_rows
