"""What reads return: `OnlineResponse` (Feast's `to_dict()` / `to_df()` over
the column-major answer) and `TrainingSet` (an Arrow table fetched over HTTP,
with the same methods as the embedded `HistoricalResult`)."""
from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq


class OnlineResponse:
    """An online read. `raw` is the REST API's Feast-shaped document:
    `{"metadata": {"feature_names": [...]}, "results": [{"values", "statuses",
    "event_timestamps"}, ...]}`, one result per entity key then per feature."""

    def __init__(self, raw: dict, n_keys: int):
        self.raw = raw
        self.n_keys = n_keys  # how many leading results are the entity keys
        # names are unique: the read that made `raw` refused a clash
        # (fsapp.registry.catalog.check_feature_names, on every surface)

    @property
    def feature_names(self) -> list[str]:
        return list(self.raw["metadata"]["feature_names"])

    def to_dict(self, include_event_timestamps: bool = False) -> dict[str, list]:
        """`{"user_id": [1, 2], "txn_count_1h": [3, None]}` like Feast's
        `OnlineResponse.to_dict()`; missing values are None. With
        `include_event_timestamps`, each feature also gets
        `<name>__ts` (ISO-8601, the newest event the value reflects)."""
        out: dict[str, list] = {}
        names = self.feature_names
        for name, res in zip(names, self.raw["results"]):
            out[name] = list(res["values"])
        if include_event_timestamps:
            for name, res in list(zip(names, self.raw["results"]))[self.n_keys:]:
                out[f"{name}__ts"] = list(res["event_timestamps"])
        return out

    def statuses(self) -> dict[str, list[str]]:
        """Per column: PRESENT, NOT_FOUND, NULL_VALUE or OUTSIDE_MAX_AGE."""
        return {n: list(r["statuses"]) for n, r in zip(self.feature_names, self.raw["results"])}

    def to_df(self):
        return _pandas().DataFrame(self.to_dict())

    def __repr__(self) -> str:
        n = len(self.raw["results"][0]["values"]) if self.raw["results"] else 0
        return f"<OnlineResponse {n} rows: {', '.join(self.feature_names)}>"


class TrainingSet:
    """A point-in-time training set already fetched (the Client's answer)."""

    provenance = None  # what the set is made of (fsapp.sdk.provenance.Provenance)

    def __init__(self, table: pa.Table):
        self._table = table

    def to_arrow(self) -> pa.Table:
        return self._table

    def to_df(self):
        _pandas()
        return self._table.to_pandas()

    def to_parquet(self, path: str) -> str:
        pq.write_table(self._table, path)
        return path

    def __len__(self) -> int:
        return self._table.num_rows


def _pandas():
    """pandas, which fstore does not install: `to_df()` is for those who have it."""
    try:
        import pandas
    except ImportError:
        raise ImportError("to_df() needs pandas, which fstore does not install: `pip install pandas`, "
                          "or use to_dict() (online answers) / to_arrow() (training sets)") from None
    return pandas
