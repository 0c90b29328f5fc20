"""Kafka message values → rows of a stream: JSON (a whole poll batch at once
through Arrow's JSON reader, or one message at a time by the rules that
decide what is a dead letter) and Avro (fastavro, writer schemas resolved).
Used by fsapp.engine.kafka; docs/kafka.md "Batch decoding"."""
from __future__ import annotations

import io
import json
import math
import os
import re

import numpy as np
import pyarrow as pa
import pyarrow.json as pa_json
from confluent_kafka import TIMESTAMP_NOT_AVAILABLE

from fscore import jsonrows
from fscore.kafkafetch import Packed

from fsapp.engine.avro import AvroDecoder, AvroError
from fsapp.engine.errors import BatchError
from fsapp.engine.ingest import TIME_MAX_US, TIME_MIN_US, _kind_of, check_time_range, iso_us, timestamps_us


class Malformed(ValueError):
    def __init__(self, kind: str, reason: str):
        super().__init__(reason)
        self.kind = kind


def _epoch_us(v, field: str) -> int:
    """One event time → µs UTC, by the rules of `fsapp.engine.ingest`
    (ISO-8601, or epoch s / ms / µs by magnitude)."""
    if isinstance(v, bool) or not isinstance(v, (int, float, str)):
        raise Malformed("schema", f"timestamp field {field!r} is {type(v).__name__}; use ISO-8601 or epoch numbers")
    if isinstance(v, str):
        try:
            return iso_us(v)
        except ValueError:
            raise Malformed("schema", f"timestamp field {field!r}: {v!r} is not ISO-8601 or an epoch number") from None
    if isinstance(v, float) and not math.isfinite(v):
        raise Malformed("schema", f"timestamp field {field!r} is {v!r}; send ISO-8601 or an epoch number")
    mag = abs(v)
    scale = 1_000_000 if mag < 1e11 else 1_000 if mag < 1e14 else 1
    us = int(round(v * scale)) if isinstance(v, float) else v * scale
    if not TIME_MIN_US <= us <= TIME_MAX_US:
        raise Malformed("schema", f"timestamp field {field!r}: {v!r} is outside years 0001..9999 (epoch numbers "
                        "are read as seconds below 1e11, milliseconds below 1e14, else µs)")
    return us


class AvroStreamDecoder:
    """Avro message values (the stream's .avsc schema) → rows; the same
    field rules as JSON (undeclared fields ignored, Kafka timestamp fallback)."""

    def __init__(self, stream, config):
        path = stream.avro_schema
        if not os.path.isabs(path):
            path = os.path.join(config.repo_root, path)
        self.json = StreamDecoder(stream)
        self.avro = AvroDecoder(path, config.avro_framing, config.avro_writer_schemas)

    def row(self, msg) -> dict:
        value = msg.value()
        if value is None:
            raise Malformed("empty", "the message has no value (a tombstone); send an Avro record")
        try:
            obj = self.avro.decode(value)
        except AvroError as e:
            raise Malformed("avro", f"the value does not decode with {self.avro.path}: {e}") from None
        return self.json._with_time(msg, obj)

    def table(self, rows: list[dict]) -> pa.Table:
        return self.json.table(rows)

    @property
    def mixed(self) -> bool:
        return self.json.mixed

    def decode(self, msgs: list, values: list | None = None) -> tuple[pa.Table | None, list, list]:
        return _decode_each(self, msgs)


def _decode_each(decoder, msgs: list) -> tuple[pa.Table | None, list, list]:
    """One message at a time (`decoder.row`): (table, the message of each
    row, [(message, kind, reason)] for the malformed ones)."""
    rows, row_msgs, dead = [], [], []
    for m in msgs:
        try:
            rows.append(decoder.row(m))
            row_msgs.append(m)
        except Malformed as e:
            dead.append((m, e.kind, str(e)))
    return (decoder.table(rows) if rows else None), row_msgs, dead


# an inner line of the joined batch that does not start an object: blank (the
# JSON reader skips those) or another JSON value (it reads `null` as a row of
# nulls); PERF: a literal first byte lets `re` scan with memchr (25x faster
# than anchoring with ^ alternatives); the first and last lines are checked
# on their own
_NOT_AN_OBJECT_LINE = re.compile(rb"\n[ \t\r]*[^ \t\r{]")
_FAST_TYPES = {"int": pa.int64(), "float": pa.float64(), "bool": pa.bool_(), "text": pa.string()}
_TS_TYPES = {int: pa.int64(), float: pa.float64(), str: pa.string()}
_MAX_SKIP = 64  # batches decoded one message at a time after the batch reader failed, at most
_NATIVE_KIND = {pa.int64(): jsonrows.KIND_INT, pa.float64(): jsonrows.KIND_FLOAT, pa.bool_(): jsonrows.KIND_BOOL,
                pa.string(): jsonrows.KIND_TEXT}


class StreamDecoder:
    """JSON message values → rows of one stream. Fields the stream does not
    declare are ignored (producers may add fields); a missing timestamp
    field falls back to the Kafka message timestamp.

    A poll batch is decoded at once by Arrow's JSON reader (C++) into the
    stream's declared types (`decode`). Any message that reader cannot take
    as it is — not JSON, not one object, a value of another JSON type than
    the column's, a tombstone, invalid UTF-8 — sends the whole batch through
    the one-message-at-a-time reader (`row`), whose rules decide what is a
    dead letter and what DuckDB's casts accept: the batch reader is a faster
    path to the same rows, never a different judgement. After such a batch
    the topic's next 1, 2, 4 … 64 batches skip the batch reader (a producer
    that sends numbers as text costs one failed attempt in 64)."""

    def __init__(self, stream):
        self.stream = stream
        self.names = [c.name for c in stream.columns]
        self.ts = stream.timestamp
        fields = []
        for c in stream.columns:
            if c.name == self.ts:
                continue
            t = _FAST_TYPES.get(_kind_of(c.type))
            if t is None:  # a type JSON has no one spelling for (dates, lists...): per message
                fields = None
                break
            fields.append(pa.field(c.name, t))
        self.fields = fields
        self.ts_index = self.names.index(self.ts) if self.ts in self.names else None
        self._skip = 0
        # the last `table()` had a column whose values are of several JSON
        # types (1 beside true, 7 beside "x"): its Arrow column is not what
        # each value alone would give, so the engine must judge it in parts
        self.mixed = False
        self._backoff = 1
        self.batches = {"batch": 0, "each": 0, "native_declined": 0}  # how batches were decoded (bench, tests)
        self.native = True  # the C reader first (fscore.jsonrows); False: Arrow's only (tests compare them)

    def row(self, msg) -> dict:
        value = msg.value()
        if value is None:
            raise Malformed("empty", "the message has no value (a tombstone); send a JSON object")
        try:
            obj = json.loads(value)
        except (ValueError, UnicodeDecodeError) as e:
            raise Malformed("json", f"the value is not JSON: {e}") from None
        if not isinstance(obj, dict):
            raise Malformed("not_object", f"the value is a JSON {type(obj).__name__}; send one object per event")
        return self._with_time(msg, obj)

    def decode(self, msgs: list, values: list | None = None) -> tuple[pa.Table | None, list, list]:
        """A poll batch → (table, the message of each row, dead letters as
        [(message, kind, reason)]); `values`: the messages' values if taken
        already."""
        if self.fields is not None and self._skip == 0:
            table = self._batch(msgs, values)
            if table is not None:
                self._backoff = 1
                self.batches["batch"] += 1
                return table, msgs, []
            self._skip = self._backoff
            self._backoff = min(self._backoff * 2, _MAX_SKIP)
        elif self._skip:
            self._skip -= 1
        self.batches["each"] += 1
        return _decode_each(self, msgs)

    def _batch(self, msgs: list, values: list | None = None) -> pa.Table | None:
        """The batch through the C reader or Arrow's JSON reader, or None
        when some message needs the per-message rules."""
        if values is None:
            values = [m.value() for m in msgs]
        if not values or None in values:
            return None
        try:
            first = json.loads(values[0])  # (the event time's JSON type)
        except (ValueError, TypeError):
            return None
        if not isinstance(first, dict):
            return None
        ts_type = _TS_TYPES.get(type(first.get(self.ts)), pa.int64())
        schema = pa.schema(self.fields + [pa.field(self.ts, ts_type)])
        table = self._native(values, schema) if self.native else None
        if table is None:
            table = self._arrow(values, schema)
            if table is None:
                return None
        # event times by the push rules, checked here as `row` checks them; the
        # Kafka timestamp where the value has none
        col = table.column(self.ts)
        valid = np.asarray(col.is_valid()) if col.null_count else None
        us = np.empty(len(values), dtype=np.int64)
        try:
            if valid is None:
                us[:] = timestamps_us(col, self.ts)
            else:
                us[valid] = timestamps_us(col.filter(pa.array(valid)), self.ts)
            check_time_range(us if valid is None else us[valid], self.ts)
        except BatchError:
            return None
        if valid is not None:
            for i in np.flatnonzero(~valid).tolist():
                kind, ms = msgs[i].timestamp()
                if kind == TIMESTAMP_NOT_AVAILABLE:
                    return None
                us[i] = ms * 1000
        return table.set_column(self.ts_index, self.ts, pa.array(us, pa.timestamp("us", tz="UTC")))

    def _native(self, values: list, schema: pa.Schema) -> pa.Table | None:
        """The batch through fscore.jsonrows (C, one pass), or None for a
        batch outside the subset it reads exactly as Arrow's reader would
        (then Arrow's reader decides)."""
        types = [schema.field(n).type for n in self.names]
        names, kinds = [n.encode() for n in self.names], [_NATIVE_KIND[t] for t in types]
        got = (jsonrows.decode_packed(values.data, values.starts, names, kinds) if isinstance(values, Packed)
               else jsonrows.decode(values, names, kinds))
        if got is None:
            self.batches["native_declined"] += 1
            return None
        cols = []
        n = len(values)
        for t, (vals, valid) in zip(types, got):
            nulls = n - int(np.count_nonzero(valid))
            if t == pa.string():
                offsets, data = vals
                bitmap = pa.py_buffer(np.packbits(valid, bitorder="little")) if nulls else None
                cols.append(pa.StringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(data), bitmap, nulls))
            else:
                cols.append(pa.array(vals, t, mask=~valid if nulls else None))
        return pa.Table.from_arrays(cols, names=self.names)

    def _arrow(self, values: list, schema: pa.Schema) -> pa.Table | None:
        """The batch through Arrow's JSON reader (C++), or None."""
        n = len(values)
        buf = b"\n".join(values)
        # one line per message, each starting an object: then Arrow's rows are
        # the messages exactly when it reads len(values) rows (a line holding
        # two objects makes two)
        if (buf.count(b"\n") != n - 1 or _NOT_AN_OBJECT_LINE.search(buf)
                or not values[0].lstrip(b" \t\r").startswith(b"{") or not values[-1].strip(b" \t\r")):
            return None
        try:
            buf.decode("utf-8")  # Arrow does not check text it does not store; json.loads does
            table = pa_json.read_json(io.BytesIO(buf), read_options=pa_json.ReadOptions(use_threads=False,
                                                                                     block_size=len(buf) + 1),
                                      parse_options=pa_json.ParseOptions(explicit_schema=schema,
                                                                         unexpected_field_behavior="ignore"))
        except (ValueError, pa.ArrowInvalid, pa.ArrowNotImplementedError):  # ValueError: not UTF-8
            return None
        if table.num_rows != n:
            return None
        return table.select(self.names)

    def _with_time(self, msg, obj: dict) -> dict:
        """The stream's fields of a decoded value; the Kafka timestamp when
        the value has no event time (shared by the JSON and Avro decoders)."""
        row = {k: obj[k] for k in self.names if k in obj}
        t = row.get(self.ts)
        if t is None:
            kind, ms = msg.timestamp()
            if kind == TIMESTAMP_NOT_AVAILABLE:
                raise Malformed("schema", f"no {self.ts!r} field and no Kafka timestamp; every event needs a time")
            row[self.ts] = ms * 1000
        else:
            row[self.ts] = _epoch_us(t, self.ts)
        return row

    def table(self, rows: list[dict]) -> pa.Table:
        """Rows → Arrow, the timestamp as timestamp[us] so no unit guessing
        happens twice; a column Arrow cannot hold as one type (mixed JSON
        types, an integer past 64 bits) becomes text for the engine's DuckDB
        casts to accept or explain. `mixed` says whether values of several
        JSON types met in a column: such a table is never pushed whole (the
        ingest judges it in parts, as each message alone would be)."""
        cols = {}
        self.mixed = False
        for name in self.names:
            vals = [r.get(name) for r in rows]
            if name == self.ts:
                cols[name] = pa.array(vals, pa.timestamp("us", tz="UTC"))
                continue
            if not self.mixed and len(rows) > 1 and len({type(v) for v in vals if v is not None}) > 1:
                self.mixed = True
            try:
                cols[name] = pa.array(vals)
            except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):  # OverflowError: an integer past 64 bits
                cols[name] = pa.array([None if v is None else json.dumps(v) if isinstance(v, (dict, list))
                                       else str(v) for v in vals])
        return pa.table(cols)
