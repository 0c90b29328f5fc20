"""Inputs shared by `FeatureStore` and `Client`: times, entity rows, and a
feature service's pinned references as the offline store names them."""
from __future__ import annotations

import datetime as dt
import math
import re
import time

import numpy as np
import pyarrow as pa

from fsapp.engine.errors import BatchError
from fsapp.engine.ingest import TIME_MAX_US, TIME_MIN_US
from fsapp.errors import EntityDataFrameError, UnknownFeatureError

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
_RELATIVE = re.compile(r"^(?:now)?\s*([+-])\s*(\d+(?:\.\d+)?)\s*(us|ms|s|m|h|d|w)$", re.I)
_UNIT_US = {"us": 1, "ms": 1_000, "s": 1_000_000, "m": 60_000_000, "h": 3_600_000_000, "d": 86_400_000_000,
            "w": 604_800_000_000}


def check_feature_args(features, feature_service) -> None:
    """Exactly one of `features` (a list of "view:feature") and `feature_service`;
    a bare string was iterated character by character ("no definition 'u'")."""
    if (features is None) == (feature_service is None):
        raise ValueError("give exactly one of features=[\"view:feature\", ...] or feature_service=\"name\"")
    if isinstance(features, str):
        raise TypeError(f"features is a list of references, e.g. features=[{features!r}]; got the string "
                        f"{features!r} (a feature service is feature_service={features!r})")


def now_us() -> int:
    return time.time_ns() // 1000


def relative_us(text: str, name: str = "time", now: int | None = None) -> int | None:
    """'now', 'now-2h', '-2h', '+30m' (units us ms s m h d w, any case) → µs
    since the epoch UTC (not range-checked); None for any other text."""
    text = text.strip()
    if text.lower() == "now":
        return now_us() if now is None else now
    m = _RELATIVE.match(text)
    if not m:
        return None
    delta = float(m.group(2)) * _UNIT_US[m.group(3).lower()]
    if not delta < 2.0 ** 63:  # (inf: a number of hundreds of digits)
        raise ValueError(f"{name}: {text!r} is outside years 0001..9999")
    delta = int(delta)
    return (now_us() if now is None else now) + (delta if m.group(1) == "+" else -delta)


def to_us(value, name: str = "time", *, now: int | None = None) -> int:
    """µs since the epoch UTC from a datetime (naive = UTC), a pandas
    Timestamp, ISO-8601 text, 'now', a relative 'now-2h' / '-2h' / '+30m', or an epoch
    number whose magnitude gives the unit (|x| < 1e11 s, < 1e14 ms, else µs),
    the same rule the REST API applies; years 0001..9999."""
    us = _to_us(value, name, now)
    if not TIME_MIN_US <= us <= TIME_MAX_US:
        raise ValueError(f"{name}: {value!r} is outside years 0001..9999 (epoch numbers are read as seconds "
                         "below 1e11, milliseconds below 1e14, else µs)")
    return us


def _to_us(value, name: str, now: int | None) -> int:
    if isinstance(value, bool) or value is None:
        raise ValueError(f"{name} must be a time (datetime, ISO-8601 text or epoch number), not {value!r}")
    if hasattr(value, "to_pydatetime"):  # pandas.Timestamp
        value = value.to_pydatetime()
    if isinstance(value, np.datetime64):
        return int(value.astype("datetime64[us]").astype(np.int64))
    if isinstance(value, dt.datetime):
        d = value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)
        delta = d - _EPOCH
        return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
    if isinstance(value, dt.date):
        return _to_us(dt.datetime(value.year, value.month, value.day), name, now)
    if isinstance(value, (int, float, np.integer, np.floating)):
        v = float(value) if isinstance(value, (float, np.floating)) else int(value)
        if isinstance(v, float) and not math.isfinite(v):
            raise ValueError(f"{name} must be a finite epoch number")
        mag = abs(v)
        return int(round(v * 1_000_000 if mag < 1e11 else v * 1_000 if mag < 1e14 else v))
    if isinstance(value, str):
        text = value.strip()
        us = relative_us(text, name, now)
        if us is not None:
            return us
        try:
            return _to_us(dt.datetime.fromisoformat(text.replace("Z", "+00:00")), name, now)
        except ValueError:
            pass
        try:
            return _to_us(float(text), name, now)
        except ValueError:
            raise ValueError(f"{name}: {value!r} is not a time; write ISO-8601 (2026-11-27T10:00:00Z), an epoch "
                             "number, 'now' or a relative time like 'now-2h'") from None
    raise ValueError(f"{name} must be a time (datetime, ISO-8601 text or epoch number), not {type(value).__name__}")


def _plain(v):
    """numpy scalars → Python (the online path checks `isinstance(v, int)`);
    pandas' missing values (NA, NaT) → None, which the read refuses naming
    its row."""
    if isinstance(v, np.generic):
        return v.item()
    if type(v).__name__ in ("NAType", "NaTType"):
        return None
    return v


def entity_columns(entity_rows) -> dict[str, list]:
    """Feast's `entity_rows` (list of dicts) or a dict of lists, a pandas
    DataFrame or an Arrow table → {key column: [values]} of Python values."""
    if entity_rows is None:
        raise BatchError("entity_rows is required, e.g. entity_rows=[{\"user_id\": 1}] or {\"user_id\": [1, 2]}")
    if isinstance(entity_rows, pa.Table):
        return entity_rows.to_pydict()
    if hasattr(entity_rows, "columns") and hasattr(entity_rows, "iloc"):  # pandas
        return {str(c): [_plain(v) for v in entity_rows[c].tolist()] for c in entity_rows.columns}
    if isinstance(entity_rows, dict):
        out = {}
        for k, v in entity_rows.items():
            if isinstance(v, (str, bytes)) or not hasattr(v, "__iter__"):
                raise BatchError(f"entity key {k!r} must map to a list of values, e.g. {{{k!r}: [1, 2]}}; "
                                 "for one row use entity_rows=[{...}]")
            out[k] = [_plain(x) for x in v]
        return out
    if isinstance(entity_rows, (list, tuple)):
        if not all(isinstance(r, dict) for r in entity_rows):
            raise BatchError("entity_rows must be dicts like {\"user_id\": 1} (or one dict of lists)")
        names = list(dict.fromkeys(k for r in entity_rows for k in r))
        for i, r in enumerate(entity_rows):
            for k in names:
                if k not in r:
                    raise BatchError(f"entity row {i} lacks {k!r}; every row needs the same keys")
        return {k: [_plain(r[k]) for r in entity_rows] for k in names}
    raise BatchError(f"entity_rows must be a list of dicts or a dict of lists, not {type(entity_rows).__name__}")


def entity_table(entity_df, timestamp_column: str = "event_timestamp") -> pa.Table:
    """An entity_df (pandas, Arrow, dict of lists, list of dicts) as an Arrow
    table whose timestamp column is timestamp[us, UTC]."""
    if isinstance(entity_df, pa.RecordBatch):
        entity_df = pa.Table.from_batches([entity_df])
    if isinstance(entity_df, pa.Table):
        table = entity_df
    elif hasattr(entity_df, "columns") and hasattr(entity_df, "iloc"):
        table = pa.Table.from_pandas(entity_df, preserve_index=False)
    elif isinstance(entity_df, (dict, list, tuple)):
        cols = entity_columns(entity_df)
        if timestamp_column in cols:
            cols[timestamp_column] = pa.array([to_us(v, f"{timestamp_column}[{i}]")
                                               for i, v in enumerate(cols[timestamp_column])],
                                              pa.timestamp("us", tz="UTC"))
        try:
            table = pa.table(cols)
        except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
            raise EntityDataFrameError(f"entity_df columns cannot be read: {e}; give each column one type") from None
    else:
        raise EntityDataFrameError(f"entity_df must be a pandas DataFrame, an Arrow table, a dict of lists or a "
                                   f"list of dicts, not {type(entity_df).__name__}")
    if timestamp_column not in table.column_names:
        raise EntityDataFrameError(f"entity_df has no {timestamp_column!r} column (it has "
                                   f"{', '.join(table.column_names)}): add the time as of which each row's features "
                                   "are computed")
    col = table.column(timestamp_column)
    if pa.types.is_timestamp(col.type) and col.type.unit != "us":
        # CSV and pandas give ns; the point-in-time SQL works in µs
        us = col.cast(pa.timestamp("us", tz=col.type.tz or "UTC"), safe=False)
        table = table.set_column(table.column_names.index(timestamp_column), timestamp_column, us)
    elif not pa.types.is_timestamp(col.type):
        us = pa.array([to_us(v, timestamp_column) for v in col.to_pylist()], pa.timestamp("us", tz="UTC"))
        table = table.set_column(table.column_names.index(timestamp_column), timestamp_column, us)
    return table


def service_refs(pinned: list[str], live_version) -> list[str]:
    """A feature service's pinned refs ('user_txn@v1:txn_count_1h') as the
    offline store names them: 'user_txn:txn_count_1h' where the pin is the
    live version, else the pinned version, which training sets are built
    from (as the service's online reads serve it)."""
    out = []
    for ref in pinned:
        view, _, feature = ref.partition(":")
        name, _, version = view.partition("@v")
        out.append(f"{name}:{feature}" if not version or int(version) == live_version(name) else ref)
    return out
