"""Normalisation of batch inputs (keys, values, nulls) shared by the Cython
table and its pure-Python reference, so both accept exactly the same inputs
and reject bad ones with the same messages."""
from __future__ import annotations

import numpy as np

from fscore.errors import KeyEncodingError, SchemaError
from fscore.schema import Schema

# value kinds held as an (n, size) matrix per column: vector (float32
# elements, NaN = a null element), vector64 (float64 elements, the same) and
# list (float64; up to `size` items, NaN marks the unused tail: last_k)
VECTOR_DTYPES = {"vector": np.float32, "vector64": np.float64, "list": np.float64}


def _as_1d(name: str, arr, role: str) -> np.ndarray:
    a = np.asarray(arr) if not isinstance(arr, np.ndarray) else arr
    if a.ndim != 1:
        raise SchemaError(f"{role} {name!r} must be one-dimensional, got shape {a.shape}")
    return a


class BatchResult:
    """Arrays for a batch lookup: status (uint8), event_ts, created_ts, values, nulls."""

    __slots__ = ("status", "event_ts", "created_ts", "values", "nulls")

    def __init__(self, status, event_ts, created_ts, values, nulls):
        self.status = status
        self.event_ts = event_ts
        self.created_ts = created_ts
        self.values = values
        self.nulls = nulls

    def __len__(self):
        return len(self.status)


def key_columns(schema: Schema, keys) -> tuple[list[np.ndarray], int]:
    """Keys as one array per key column: int64 arrays and object arrays of str.

    `keys` is an array-like for a single key column, or a dict name -> array
    (or a list of arrays in key-column order) for composite keys.
    """
    fields = schema.keys
    if isinstance(keys, dict):
        missing = [f.name for f in fields if f.name not in keys]
        if missing:
            raise KeyEncodingError(f"missing key column(s) {', '.join(missing)}; keys are {', '.join(schema.key_names)}")
        cols = [keys[f.name] for f in fields]
    elif len(fields) == 1:
        cols = [keys]
    elif isinstance(keys, (list, tuple)) and len(keys) == len(fields):
        cols = list(keys)
    else:
        raise KeyEncodingError(f"composite key: pass a dict with {', '.join(schema.key_names)}")
    out = []
    n = None
    for f, c in zip(fields, cols):
        a = _as_1d(f.name, c, "key column")
        if f.kind == "int64":
            if a.dtype.kind not in "iu" and not (a.size == 0 and a.dtype.kind == "f"):
                raise KeyEncodingError(f"key column {f.name!r} is int64; got values of dtype {a.dtype}")
            if a.dtype.kind == "u" and a.size and a.max() > np.iinfo(np.int64).max:
                raise KeyEncodingError(f"key column {f.name!r}: values over int64 range")
            a = np.ascontiguousarray(a, dtype=np.int64)
        else:
            if a.dtype.kind == "U":
                a = a.astype(object)
            elif a.dtype != object:
                raise KeyEncodingError(f"key column {f.name!r} is string; got values of dtype {a.dtype}")
            a = np.ascontiguousarray(a)
        if n is None:
            n = a.shape[0]
        elif a.shape[0] != n:
            raise KeyEncodingError(f"key columns have different lengths ({n} and {a.shape[0]})")
        out.append(a)
    return out, int(n or 0)


def value_columns(schema: Schema, values, n: int, nulls=None) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Values and null masks, one each per schema column, in schema order.

    A column absent from `values` is all null. String columns take object
    arrays whose None items are null; `nulls[name]` (bool) marks more nulls.
    """
    values = values or {}
    nulls = nulls or {}
    unknown = sorted(set(values) - set(schema.column_names))
    if unknown:
        raise SchemaError(f"unknown column(s) {', '.join(unknown)}; columns are {', '.join(schema.column_names)}")
    unknown = sorted(set(nulls) - set(schema.column_names))
    if unknown:
        raise SchemaError(f"null mask for unknown column(s) {', '.join(unknown)}")
    vals, masks = [], []
    for f in schema.columns:
        if f.name not in values:
            vals.append(_empty(f, n))
            masks.append(np.ones(n, dtype=np.bool_))
            continue
        a = np.asarray(values[f.name])
        if a.shape[:1] != (n,):
            raise SchemaError(f"column {f.name!r} has {a.shape[0] if a.ndim else 0} rows, expected {n}")
        mask = np.zeros(n, dtype=np.bool_)
        if f.kind in VECTOR_DTYPES:
            if a.ndim != 2 or a.shape[1] != f.size or a.dtype.kind not in "iuf":
                raise SchemaError(f"{f.kind} column {f.name!r} needs a numeric array of shape ({n}, {f.size}), "
                                  f"got {a.dtype} {a.shape}")
            a = np.ascontiguousarray(a, dtype=VECTOR_DTYPES[f.kind])
        elif a.ndim != 1:
            raise SchemaError(f"column {f.name!r} must be one-dimensional, got shape {a.shape}")
        elif f.kind == "int64":
            if a.dtype.kind not in "iub":
                raise SchemaError(f"column {f.name!r} is int64; got dtype {a.dtype}")
            a = np.ascontiguousarray(a, dtype=np.int64)
        elif f.kind == "float64":
            if a.dtype.kind not in "iubf":
                raise SchemaError(f"column {f.name!r} is float64; got dtype {a.dtype}")
            a = np.ascontiguousarray(a, dtype=np.float64)
        elif f.kind == "bool":
            if a.dtype.kind != "b":
                raise SchemaError(f"column {f.name!r} is bool; got dtype {a.dtype}")
            a = np.ascontiguousarray(a, dtype=np.bool_)
        else:  # string
            if a.dtype.kind == "U":
                a = a.astype(object)
            elif a.dtype != object:
                raise SchemaError(f"column {f.name!r} is string; got dtype {a.dtype}")
            mask = np.fromiter((x is None for x in a), dtype=np.bool_, count=n)
        if f.name in nulls:
            m = np.asarray(nulls[f.name], dtype=np.bool_)
            if m.shape != (n,):
                raise SchemaError(f"null mask of {f.name!r} has shape {m.shape}, expected ({n},)")
            mask = mask | m
        vals.append(a)
        masks.append(mask)
    return vals, masks


def _empty(f, n: int) -> np.ndarray:
    if f.kind == "string":
        return np.full(n, None, dtype=object)
    if f.kind in VECTOR_DTYPES:
        return np.zeros((n, f.size), dtype=VECTOR_DTYPES[f.kind])
    return np.zeros(n, dtype={"int64": np.int64, "float64": np.float64, "bool": np.bool_}[f.kind])


def output_arrays(schema: Schema, n: int) -> tuple[dict, dict]:
    """Zeroed result arrays (values, nulls) for a batch lookup of n keys."""
    values = {f.name: _empty(f, n) for f in schema.columns}
    nulls = {f.name: np.ones(n, dtype=np.bool_) for f in schema.columns}
    return values, nulls


def timestamps(event_ts, created_ts, n: int) -> tuple[np.ndarray, np.ndarray]:
    ets = np.asarray(event_ts)
    if ets.shape != (n,) or ets.dtype.kind not in "iu":
        raise SchemaError(f"event_ts must be {n} int64 microseconds, got {ets.dtype} {ets.shape}")
    ets = np.ascontiguousarray(ets, dtype=np.int64)
    if created_ts is None:
        cts = ets
    else:
        cts = np.asarray(created_ts)
        if cts.shape != (n,) or cts.dtype.kind not in "iu":
            raise SchemaError(f"created_ts must be {n} int64 microseconds, got {cts.dtype} {cts.shape}")
        cts = np.ascontiguousarray(cts, dtype=np.int64)
    return ets, cts


def check_string(f, s: str) -> bytes:
    if not isinstance(s, str):
        raise SchemaError(f"column {f.name!r} is string; got {type(s).__name__} {s!r}")
    b = s.encode("utf-8")
    if len(b) > f.size:
        raise SchemaError(f"column {f.name!r}: value of {len(b)} UTF-8 bytes is over its size {f.size}")
    return b
