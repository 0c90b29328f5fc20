"""Table schemas and the stable entity-key encoding.

A table has key columns (int64 or string) and value columns (int64, float64,
bool, string, vector (float32 x size), vector64 (float64 x size), list (up to
size float64 items; NaN marks the unused tail)). Every row also carries an event timestamp and a created
timestamp (int64 microseconds since the epoch, UTC).

Key encoding (stable; the online table, the WAL and checkpoints depend on it)
---------------------------------------------------------------------------
An entity key is a tuple with one value per key column. It is encoded as the
concatenation, in key-column order, of one fixed-width field per column:

    int64  : 8 bytes, big-endian, of (value XOR 0x8000000000000000)
             (so byte order equals numeric order)
    string : 2 bytes big-endian length n, then the n UTF-8 bytes, then
             (size - n) zero bytes; n <= size, where size is the column's
             declared maximum in bytes

The encoded width is therefore fixed per schema (`Schema.key_width`); inside
the table the key is zero-padded to a multiple of 8 bytes. Equal keys encode
to equal bytes and distinct keys to distinct bytes.
"""
from __future__ import annotations

import json
from typing import NamedTuple

from fscore.errors import KeyEncodingError, SchemaError

KEY_KINDS = ("int64", "string")
VALUE_KINDS = ("int64", "float64", "bool", "string", "vector", "vector64", "list")
DEFAULT_STRING_BYTES = 64
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


class Field(NamedTuple):
    name: str
    kind: str
    size: int = 0  # max UTF-8 bytes for string, dimension for vector/vector64, most items for list

    def width(self) -> int:
        """Bytes this field takes in a key (keys) or a row (values)."""
        if self.kind in ("int64", "float64"):
            return 8
        if self.kind == "bool":
            return 1
        if self.kind == "string":
            return 2 + self.size
        if self.kind == "vector":
            return 4 * self.size  # float32 elements
        return 8 * self.size  # vector64, list: float64 elements


def _field(spec, allowed: tuple[str, ...], role: str) -> Field:
    if isinstance(spec, Field):
        name, kind, size = spec
    elif isinstance(spec, (tuple, list)) and len(spec) in (2, 3):
        name, kind = spec[0], spec[1]
        size = spec[2] if len(spec) == 3 else 0
    else:
        raise SchemaError(f"{role} column must be (name, kind) or (name, kind, size), got {spec!r}")
    if not isinstance(name, str) or not name:
        raise SchemaError(f"{role} column name must be a non-empty string, got {name!r}")
    if kind not in allowed:
        raise SchemaError(f"{role} column {name!r}: kind {kind!r} is not one of {', '.join(allowed)}")
    if kind == "string":
        size = size or DEFAULT_STRING_BYTES
        if not isinstance(size, int) or not 1 <= size <= 65535:
            raise SchemaError(f"string column {name!r}: size must be 1..65535 bytes, got {size!r}")
    elif kind in ("vector", "vector64", "list"):
        if not isinstance(size, int) or size < 1:
            raise SchemaError(f"{kind} column {name!r}: give its size as the third item, e.g. ('emb', '{kind}', 16)")
    else:
        size = 0
    return Field(name, kind, size)


class Schema:
    """Key columns and value columns of one online table."""

    def __init__(self, keys, columns):
        if not keys:
            raise SchemaError("a table needs at least one key column")
        self.keys = tuple(_field(k, KEY_KINDS, "key") for k in keys)
        self.columns = tuple(_field(c, VALUE_KINDS, "value") for c in columns)
        names = [f.name for f in self.keys + self.columns]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise SchemaError(f"duplicate column names: {', '.join(sorted(dup))}")
        self.key_width = sum(f.width() for f in self.keys)

    @property
    def key_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.keys)

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.columns)

    def column(self, name: str) -> Field:
        for f in self.columns:
            if f.name == name:
                return f
        raise SchemaError(f"no value column {name!r}; columns are {', '.join(self.column_names)}")

    def to_json(self) -> str:
        return json.dumps({"keys": [list(f) for f in self.keys], "columns": [list(f) for f in self.columns]},
                          separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> "Schema":
        d = json.loads(text)
        return cls([tuple(k) for k in d["keys"]], [tuple(c) for c in d["columns"]])

    def __eq__(self, other) -> bool:
        return isinstance(other, Schema) and self.keys == other.keys and self.columns == other.columns

    def __hash__(self):
        return hash((self.keys, self.columns))

    def __repr__(self) -> str:
        return f"Schema(keys={list(self.keys)!r}, columns={list(self.columns)!r})"

    def encode_key(self, key) -> bytes:
        """Encode one entity key (a scalar for one key column, else a tuple)."""
        if len(self.keys) == 1 and not isinstance(key, tuple):
            key = (key,)
        if not isinstance(key, tuple) or len(key) != len(self.keys):
            raise KeyEncodingError(f"key {key!r} must have {len(self.keys)} part(s): {', '.join(self.key_names)}")
        out = bytearray()
        for f, v in zip(self.keys, key):
            if f.kind == "int64":
                if isinstance(v, bool) or not isinstance(v, int) and not hasattr(v, "__index__"):
                    raise KeyEncodingError(f"key column {f.name!r} is int64; got {type(v).__name__} {v!r}")
                v = int(v)
                if not _INT64_MIN <= v <= _INT64_MAX:
                    raise KeyEncodingError(f"key column {f.name!r}: {v} does not fit in int64")
                out += ((v + 2**63) % 2**64).to_bytes(8, "big")
            else:
                if not isinstance(v, str):
                    raise KeyEncodingError(f"key column {f.name!r} is string; got {type(v).__name__} {v!r}")
                b = v.encode("utf-8")
                if len(b) > f.size:
                    raise KeyEncodingError(f"key column {f.name!r}: {len(b)} UTF-8 bytes is over its size {f.size}")
                out += len(b).to_bytes(2, "big") + b + bytes(f.size - len(b))
        return bytes(out)

    def decode_key(self, data: bytes):
        """Inverse of encode_key (padding after key_width is ignored)."""
        parts, off = [], 0
        for f in self.keys:
            if f.kind == "int64":
                parts.append(int.from_bytes(data[off:off + 8], "big") - 2**63)
                off += 8
            else:
                n = int.from_bytes(data[off:off + 2], "big")
                parts.append(bytes(data[off + 2:off + 2 + n]).decode("utf-8"))
                off += 2 + f.size
        return parts[0] if len(parts) == 1 else tuple(parts)
