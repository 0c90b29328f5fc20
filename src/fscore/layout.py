"""Byte layout of an online table buffer (shared by the Cython table, its
readers in other processes, checkpoints, and the reference's capacity math).

    header   HEADER_BYTES: magic, layout numbers, counters, schema JSON
    index    nslots x uint64 open-addressing slots (linear probing)
    rows     capacity x stride bytes, row-major (one lookup = one row's lines)

An index slot is 0 (empty), 1 (tombstone) or (tag << 32 | (row + 2)) where
tag is the high 32 bits of the key hash. A row is:

    0   int64   seq          seqlock word (odd while the writer changes the row)
    8   int64   event_ts
    16  int64   created_ts
    24  uint8   state        0 free, 1 live
    32  W bytes key          encoded key, zero-padded to a multiple of 8
    ..  ncols   null flags   1 = null
    ..  values               each column at its natural alignment
"""
from __future__ import annotations

import numpy as np

from fscore.errors import SchemaError
from fscore.schema import Schema

MAGIC = b"FSTABLE1"
VERSION = 1
HEADER_BYTES = 8192
SCHEMA_OFFSET = 1024          # schema JSON lives in the header from here
MAX_SCHEMA_JSON = HEADER_BYTES - SCHEMA_OFFSET
MAX_LOAD = 0.5                # index slots >= 2 x capacity keeps probes short

# int64 word positions in the header (word i is at byte 8 * i)
H_MAGIC, H_VERSION, H_CAPACITY, H_NSLOTS, H_STRIDE, H_KEY_WIDTH, H_TTL = range(7)
H_SCHEMA_LEN, H_GLOBAL_SEQ, H_COUNT, H_TOMBSTONES = 7, 8, 9, 10
H_EVICT_CAPACITY, H_EVICT_EXPIRED, H_STALE_ON_ARRIVAL, H_PUTS, H_WRITER_PID = 11, 12, 13, 14, 15
H_COMPACTIONS = 16
# set (to 1) by the writer once it has moved the table to a new, larger file:
# a reader that sees it reopens the path (fscore.table.Table.grow)
H_RETIRED = 17

ROW_SEQ, ROW_ETS, ROW_CTS, ROW_STATE, ROW_KEY = 0, 8, 16, 24, 32

# A full table that may grow doubles while small, then grows by a quarter:
# rows allocated stay within 1.25x of the rows held (doubling left up to 2x),
# at 2.5x the copying (each growth copies every row: ~5 copies a row in all
# against 2). Rows and index of a 160-byte row over key counts from 100k to
# 10M: 205 B a key on average and at most 239, against 254 and 352 doubling
# (a count just under a power of two flatters doubling: 1M keys, 184 B
# against 207). Measured and dropped: a quarter that stops where the index
# (a power of two of slots) would double, when that is at least half of it
# (203 B on average; which counts it favours is luck).
GROW_DOUBLING_BELOW = 4096


def next_capacity(capacity: int, max_capacity: int) -> int:
    """The capacity a full table grows to (at least 16, at most `max_capacity`)."""
    step = capacity if capacity < GROW_DOUBLING_BELOW else capacity // 4
    return min(max_capacity, max(capacity + step, 16))


def _align(x: int, a: int) -> int:
    return (x + a - 1) // a * a


def _natural_alignment(kind: str) -> int:
    return {"int64": 8, "float64": 8, "bool": 1, "string": 2, "vector": 4, "vector64": 8, "list": 8}[kind]


class Layout:
    """Offsets and sizes for a schema at a given capacity."""

    def __init__(self, schema: Schema, capacity: int):
        if capacity < 1:
            raise SchemaError(f"capacity must be at least 1 row, got {capacity}")
        if capacity >= 2**31:
            raise SchemaError(f"capacity {capacity} is over the limit of 2**31 - 1 rows")
        self.schema = schema
        self.capacity = int(capacity)
        self.key_width = schema.key_width
        self.key_stride = _align(schema.key_width, 8)
        off = ROW_KEY + self.key_stride
        self.null_offset = off
        off += len(schema.columns)
        self.col_offsets = []
        for f in schema.columns:
            off = _align(off, _natural_alignment(f.kind))
            self.col_offsets.append(off)
            off += f.width()
        self.stride = _align(off, 8)
        nslots = 8
        while nslots * MAX_LOAD < capacity:
            nslots *= 2
        self.nslots = nslots
        self.index_offset = HEADER_BYTES
        self.rows_offset = _align(HEADER_BYTES + 8 * nslots, 64)
        self.nbytes = self.rows_offset + self.stride * self.capacity

    @classmethod
    def for_max_bytes(cls, schema: Schema, max_bytes: int) -> "Layout":
        """The largest capacity whose whole buffer fits in max_bytes."""
        probe = cls(schema, 1)
        per_row = probe.stride + 8 / MAX_LOAD  # a row plus its share of index slots
        cap = max(1, int((max_bytes - HEADER_BYTES - 64) // per_row))
        while cap > 1 and cls(schema, cap).nbytes > max_bytes:
            cap = int(cap * 0.98)
        lay = cls(schema, cap)
        if lay.nbytes > max_bytes:
            raise SchemaError(f"max_bytes={max_bytes} cannot hold even one row ({lay.nbytes} bytes needed)")
        return lay

    def header(self, ttl_us: int) -> np.ndarray:
        """A fresh header block for this layout."""
        js = self.schema.to_json().encode()
        if len(js) > MAX_SCHEMA_JSON:
            raise SchemaError(f"schema JSON is {len(js)} bytes, over the {MAX_SCHEMA_JSON}-byte header limit")
        h = np.zeros(HEADER_BYTES, dtype=np.uint8)
        words = h[:SCHEMA_OFFSET].view(np.int64)
        words[H_MAGIC] = np.frombuffer(MAGIC, dtype=np.int64)[0]
        words[H_VERSION] = VERSION
        words[H_CAPACITY] = self.capacity
        words[H_NSLOTS] = self.nslots
        words[H_STRIDE] = self.stride
        words[H_KEY_WIDTH] = self.key_width
        words[H_TTL] = ttl_us
        words[H_SCHEMA_LEN] = len(js)
        h[SCHEMA_OFFSET:SCHEMA_OFFSET + len(js)] = np.frombuffer(js, dtype=np.uint8)
        return h


def read_header(buf) -> tuple[Layout, int]:
    """Layout and ttl from an existing table buffer; raises on a foreign file."""
    b = np.frombuffer(buf, dtype=np.uint8, count=HEADER_BYTES) if not isinstance(buf, np.ndarray) else buf[:HEADER_BYTES]
    if b.size < HEADER_BYTES or bytes(b[:8]) != MAGIC:
        raise SchemaError("not an fstore table buffer (bad magic); was the file written by fscore.table?")
    words = b[:SCHEMA_OFFSET].view(np.int64)
    if words[H_VERSION] != VERSION:
        raise SchemaError(f"table buffer version {int(words[H_VERSION])} is not supported (expected {VERSION})")
    n = int(words[H_SCHEMA_LEN])
    schema = Schema.from_json(bytes(b[SCHEMA_OFFSET:SCHEMA_OFFSET + n]).decode())
    lay = Layout(schema, int(words[H_CAPACITY]))
    if lay.nslots != words[H_NSLOTS] or lay.stride != words[H_STRIDE]:
        raise SchemaError("table buffer header disagrees with its schema (corrupt or from another version)")
    return lay, int(words[H_TTL])
