"""Avro message values (a schema file, .avsc) → rows, for Kafka streams with
`format = 'avro'`. A small decoder of Avro's binary encoding (no dependency):
records, null, boolean, int, long, float, double, bytes, string, enum, fixed,
union, array, map, and the logical types timestamp-millis/-micros (read as
µs since the epoch) and date (days).

Framing: Confluent's wire format (byte 0, a 4-byte schema id, then the Avro
body) by default, or the bare Avro body (`kafka.avro_framing: raw`).
"""
from __future__ import annotations

import json
import os
import struct

from fsapp.registry.errors import RepoError

PRIMITIVES = ("null", "boolean", "int", "long", "float", "double", "bytes", "string")


class AvroError(ValueError):
    """A value that does not decode with the stream's schema."""


def load_schema(path: str) -> dict:
    try:
        with open(path) as f:
            schema = json.load(f)
    except OSError as e:
        raise RepoError(f"Avro schema file {path!r} cannot be read: {e}") from None
    except ValueError as e:
        raise RepoError(f"Avro schema file {path!r} is not JSON: {e}") from None
    if not (isinstance(schema, dict) and schema.get("type") == "record"):
        raise RepoError(f"Avro schema {path!r}: the top level must be a record (one event per message)")
    _check(schema, {}, path)
    return schema


def _check(s, named: dict, path: str) -> None:
    if isinstance(s, str):
        if s not in PRIMITIVES and s not in named:
            raise RepoError(f"Avro schema {path!r}: unknown type {s!r}")
    elif isinstance(s, list):
        for b in s:
            _check(b, named, path)
    elif isinstance(s, dict):
        t = s.get("type")
        if t == "record":
            named[s["name"]] = s
            for f in s.get("fields", []):
                _check(f["type"], named, path)
        elif t in ("enum", "fixed"):
            named[s["name"]] = s
        elif t == "array":
            _check(s["items"], named, path)
        elif t == "map":
            _check(s["values"], named, path)
        else:
            _check(t, named, path)
    else:
        raise RepoError(f"Avro schema {path!r}: cannot read type {s!r}")


class _Reader:
    __slots__ = ("buf", "pos", "named")

    def __init__(self, buf: bytes, pos: int = 0):
        self.buf = buf
        self.pos = pos
        self.named: dict = {}

    def need(self, n: int) -> int:
        p = self.pos
        if p + n > len(self.buf):
            raise AvroError(f"the value ends early (needs {n} more bytes at offset {p})")
        self.pos = p + n
        return p

    def long(self) -> int:
        shift = result = 0
        while True:
            b = self.buf[self.need(1)]
            result |= (b & 0x7F) << shift
            if not b & 0x80:
                return (result >> 1) ^ -(result & 1)  # zigzag
            shift += 7
            if shift > 63:
                raise AvroError("a varint is longer than 10 bytes")

    def read(self, s):
        if isinstance(s, str):
            if s in self.named:
                return self.read(self.named[s])
            if s == "null":
                return None
            if s == "boolean":
                return self.buf[self.need(1)] != 0
            if s in ("int", "long"):
                return self.long()
            if s == "float":
                return struct.unpack_from("<f", self.buf, self.need(4))[0]
            if s == "double":
                return struct.unpack_from("<d", self.buf, self.need(8))[0]
            n = self.long()
            if n < 0:
                raise AvroError(f"negative length {n}")
            raw = bytes(self.buf[self.need(n):self.pos])
            if s == "bytes":
                return raw
            try:
                return raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise AvroError(f"a string is not UTF-8: {e}") from None
        if isinstance(s, list):
            i = self.long()
            if not 0 <= i < len(s):
                raise AvroError(f"union branch {i} does not exist (the schema has {len(s)})")
            return self.read(s[i])
        t = s["type"]
        if t == "record":
            self.named[s["name"]] = s
            return {f["name"]: self.read(f["type"]) for f in s["fields"]}
        if t == "enum":
            self.named[s["name"]] = s
            i = self.long()
            if not 0 <= i < len(s["symbols"]):
                raise AvroError(f"enum index {i} out of range")
            return s["symbols"][i]
        if t == "fixed":
            self.named[s["name"]] = s
            return bytes(self.buf[self.need(s["size"]):self.pos])
        if t in ("array", "map"):
            out = [] if t == "array" else {}
            while True:
                n = self.long()
                if n == 0:
                    return out
                if n < 0:  # a block with its byte size after the count
                    n = -n
                    self.long()
                for _ in range(n):
                    if t == "array":
                        out.append(self.read(s["items"]))
                    else:
                        k = self.read("string")
                        out[k] = self.read(s["values"])
        v = self.read(t)
        logical = s.get("logicalType")
        if logical == "timestamp-millis" and v is not None:
            return v * 1000
        return v  # timestamp-micros is already µs; date stays days


class AvroDecoder:
    """Decodes one message value into a dict with the schema's fields."""

    def __init__(self, schema_path: str, framing: str = "confluent"):
        if framing not in ("confluent", "raw"):
            raise RepoError(f"avro framing must be 'confluent' or 'raw', got {framing!r}")
        self.schema = load_schema(schema_path)
        self.framing = framing
        self.path = os.path.abspath(schema_path)

    def decode(self, value: bytes) -> dict:
        start = 0
        if self.framing == "confluent":
            if len(value) < 5 or value[0] != 0:
                raise AvroError("not in Confluent's wire format (magic byte 0 + 4-byte schema id); "
                                "set kafka.avro_framing: raw for bare Avro bodies")
            start = 5
        r = _Reader(value, start)
        out = r.read(self.schema)
        if r.pos != len(value):
            raise AvroError(f"{len(value) - r.pos} bytes left after the record: the schema does not match")
        return out
