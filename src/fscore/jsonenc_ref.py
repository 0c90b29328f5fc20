"""Pure-Python twin of `fscore.jsonenc` (the test oracle): the same bytes,
built from Python lists and `json.dumps`."""
from __future__ import annotations

import json
import math

import numpy as np

STATUS_NAMES = ("NOT_FOUND", "PRESENT", "OUTSIDE_MAX_AGE", "NULL_VALUE")
PRESENT, NULL_VALUE = 1, 3


def _num(x):
    return x if not isinstance(x, float) or math.isfinite(x) else None


def _values(a: np.ndarray, null: np.ndarray, kind: str | None) -> list:
    """`kind`: "vector64" for a float64 matrix of fixed-size vectors (else a
    float64 matrix is a list: items up to the first NaN), "count" for an
    int64 column that reads 0 where null."""
    out = []
    is_list = a.ndim == 2 and a.dtype == np.float64 and kind != "vector64"
    for i, v in enumerate(a.tolist()):
        if null[i] or v is None:
            out.append(0 if kind == "count" else None)
        elif is_list:
            items = []
            for x in v:
                if x != x:
                    break
                items.append(_num(x))
            out.append(items)
        elif isinstance(v, list):
            out.append([_num(x) for x in v])
        else:
            out.append(_num(v))
    return out


def iso(us: int) -> str:
    return str(np.datetime_as_string(np.array([us], dtype="datetime64[us]"), unit="us")[0]) + "Z"


def feature_results(values: list, nulls: list, status, event_ts, kinds: list | None = None) -> list[bytes]:
    """`kinds`: optional per feature None, "vector64" or "count" (see `_values`)."""
    status = np.asarray(status, dtype=np.uint8)
    if any(s > 2 for s in status.tolist()):
        raise ValueError("unknown lookup status")
    stamps = [iso(t) for t in np.asarray(event_ts, dtype=np.int64).tolist()]
    out = []
    for k, (a, null) in enumerate(zip(values, nulls)):
        null = np.asarray(null, dtype=bool)
        codes = [NULL_VALUE if s == PRESENT and z else s for s, z in zip(status.tolist(), null.tolist())]
        doc = {"values": _values(np.asarray(a), null, None if kinds is None else kinds[k]),
               "statuses": [STATUS_NAMES[c] for c in codes], "event_timestamps": stamps}
        out.append(json.dumps(doc, allow_nan=False, separators=(",", ":")).encode())
    return out
