"""Avro message values → rows, for Kafka streams with `format = 'avro'`,
decoded by fastavro (C) with the stream's schema file (.avsc) as the reader
schema.

Framing: Confluent's wire format (byte 0, a 4-byte schema id, then the Avro
body) by default, or the bare Avro body (`kafka.avro_framing: raw`).

Schema evolution: producers may write with another schema than the
stream's. `kafka.avro_writer_schemas` maps Confluent schema ids to the
writer schema files; a message whose id is listed is read with that writer
schema resolved against the stream's (Avro's resolution rules: fields the
reader does not have are skipped, fields the writer lacks take the reader's
default, int → long → float → double promotions, union branches matched by
type). An id that is not listed, and every raw-framed message, is read with
the stream's own schema.

Logical types come out as the push path takes them: timestamp-millis and
timestamp-micros as µs since the epoch, date as days since the epoch.
"""
from __future__ import annotations

import datetime as dt
import io
import json
import os
import struct

import fastavro
from fastavro.read import SchemaResolutionError

from fsapp.engine.ingest import datetime_us
from fsapp.registry.errors import RepoError

_EPOCH_DATE = dt.date(1970, 1, 1)


class AvroError(ValueError):
    """A value that does not decode with the stream's schema."""


def load_schema(path: str) -> dict:
    """A record schema file, checked and parsed by fastavro."""
    try:
        with open(path) as f:
            schema = json.load(f)
    except OSError as e:
        raise RepoError(f"Avro schema file {path!r} cannot be read: {e}") from None
    except ValueError as e:
        raise RepoError(f"Avro schema file {path!r} is not JSON: {e}") from None
    if not (isinstance(schema, dict) and schema.get("type") == "record"):
        raise RepoError(f"Avro schema {path!r}: the top level must be a record (one event per message)")
    try:
        return fastavro.parse_schema(schema)
    except Exception as e:  # fastavro raises SchemaParseException, UnknownType, ValueError...
        raise RepoError(f"Avro schema {path!r} is not a valid schema ({type(e).__name__}: {e})") from None


def _plain(v):
    """fastavro's logical-type objects → what a JSON push carries."""
    if isinstance(v, dt.datetime):
        return datetime_us(v)
    if isinstance(v, dt.date):
        return (v - _EPOCH_DATE).days
    return v


class AvroDecoder:
    """Decodes one message value into a dict with the reader schema's fields."""

    def __init__(self, schema_path: str, framing: str = "confluent", writer_schemas: dict | None = None):
        if framing not in ("confluent", "raw"):
            raise RepoError(f"avro framing must be 'confluent' or 'raw', got {framing!r}")
        self.schema = load_schema(schema_path)
        self.framing = framing
        self.path = os.path.abspath(schema_path)
        # schema id → (writer schema, its file), resolved against self.schema
        self.writers = {int(i): (load_schema(p), p) for i, p in (writer_schemas or {}).items()}
        self._convert = [f["name"] for f in self.schema["fields"] if _has_logical(f["type"])]

    def decode(self, value: bytes) -> dict:
        writer, start = self.schema, 0
        if self.framing == "confluent":
            if len(value) < 5 or value[0] != 0:
                raise AvroError("not in Confluent's wire format (magic byte 0 + 4-byte schema id); "
                                "set kafka.avro_framing: raw for bare Avro bodies")
            start = 5
            known = self.writers.get(struct.unpack_from(">I", value, 1)[0])
            if known is not None:
                writer = known[0]
        buf = io.BytesIO(value)
        buf.seek(start)
        try:
            out = fastavro.schemaless_reader(buf, writer, self.schema if writer is not self.schema else None)
        except SchemaResolutionError as e:
            raise AvroError(f"the writer schema does not resolve against the stream's: {e}") from None
        except EOFError:
            raise AvroError(f"the value ends early (at byte {buf.tell()} of {len(value)})") from None
        except (ValueError, IndexError, KeyError, TypeError, OverflowError, UnicodeDecodeError, StopIteration) as e:
            raise AvroError(f"{type(e).__name__}: {e}") from None
        if buf.tell() != len(value):
            raise AvroError(f"{len(value) - buf.tell()} bytes left after the record: the schema does not match")
        if not isinstance(out, dict):
            raise AvroError("the value is not a record")
        for name in self._convert:
            if name in out:
                out[name] = _plain(out[name])
        return out


def _has_logical(t) -> bool:
    if isinstance(t, list):
        return any(_has_logical(b) for b in t)
    return isinstance(t, dict) and t.get("logicalType") in ("timestamp-millis", "timestamp-micros", "date",
                                                            "local-timestamp-millis", "local-timestamp-micros")
