"""The payloads of DurableTable's WAL records: a compact binary encoding of a
normalised batch (numpy arrays as raw little-endian bytes, strings as UTF-8
with offsets). Stable: logs outlive the code that wrote them.

    payload  := version:u8=1 now:i64 n:u32 ncols:u16 column* offsets
    column   := role:u8 name_len:u16 name:utf8 pad8 body pad8
    role     := 0 key | 1 value | 2 null mask | 3 event_ts | 4 created_ts
    body     := 0:u8 ndim:u8 shape:u32{ndim} dtype_len:u8 dtype:ascii pad8 raw   fixed-width
              | 1:u8 pad8 valid:u8{n} pad8 ends:u64{n} utf8                     strings
    offsets  := len:u32 json:utf8            source offsets ({} when none)

`pad8` aligns the next field to 8 bytes from the payload start, so decoded
arrays are aligned views of the record. The record type (PUT, DELETE,
EXPIRE) is the WAL record's type byte.
"""
from __future__ import annotations

import json
import struct

import numpy as np

from fscore.errors import SchemaError

REC_PUT, REC_DELETE, REC_EXPIRE = 1, 2, 3
ROLE_KEY, ROLE_VALUE, ROLE_NULL, ROLE_EVENT_TS, ROLE_CREATED_TS = range(5)
_HEAD = struct.Struct("<BqIH")
VERSION = 1


class Batch:
    """A decoded (or normalised) batch: arrays per role, as passed to the table."""

    __slots__ = ("now", "n", "keys", "values", "nulls", "event_ts", "created_ts", "offsets")

    def __init__(self, now: int, n: int):
        self.now, self.n = now, n
        self.keys: dict[str, np.ndarray] = {}
        self.values: dict[str, np.ndarray] = {}
        self.nulls: dict[str, np.ndarray] = {}
        self.event_ts = self.created_ts = None
        self.offsets: dict = {}


def _pad(out: bytearray) -> None:
    out += bytes(-len(out) % 8)


def _column(out: bytearray, role: int, name: str, a: np.ndarray) -> None:
    nb = name.encode()
    out += struct.pack("<BH", role, len(nb)) + nb
    _pad(out)
    if a.dtype == object:
        valid = np.fromiter((x is not None for x in a), dtype=np.uint8, count=len(a))
        parts = [x.encode() if x is not None else b"" for x in a]
        ends = np.cumsum([len(p) for p in parts], dtype=np.uint64) if parts else np.zeros(0, np.uint64)
        out += b"\x01"
        _pad(out)
        out += valid.tobytes()
        _pad(out)
        out += ends.astype("<u8").tobytes() + b"".join(parts)
    else:
        a = np.ascontiguousarray(a)
        dt = a.dtype.newbyteorder("<") if a.dtype.byteorder == ">" else a.dtype
        ds = dt.str.encode()
        out += struct.pack(f"<BB{a.ndim}IB", 0, a.ndim, *a.shape, len(ds)) + ds
        _pad(out)
        out += a.astype(dt, copy=False).tobytes()
    _pad(out)


def encode(b: Batch) -> bytes:
    cols = [(ROLE_KEY, k, a) for k, a in b.keys.items()]
    cols += [(ROLE_VALUE, k, a) for k, a in b.values.items()]
    cols += [(ROLE_NULL, k, a) for k, a in b.nulls.items()]
    if b.event_ts is not None:
        cols.append((ROLE_EVENT_TS, "", b.event_ts))
    if b.created_ts is not None:
        cols.append((ROLE_CREATED_TS, "", b.created_ts))
    out = bytearray(_HEAD.pack(VERSION, int(b.now), b.n, len(cols)))
    _pad(out)
    for role, name, a in cols:
        _column(out, role, name, a)
    off = json.dumps(b.offsets, separators=(",", ":")).encode() if b.offsets else b""
    out += struct.pack("<I", len(off)) + off
    return bytes(out)


def decode(payload: bytes) -> Batch:
    # One writable, malloc-aligned copy: the table's kernels take writable,
    # aligned typed memoryviews, and the arrays below are views of it.
    mv = memoryview(bytearray(payload))
    version, now, n, ncols = _HEAD.unpack_from(mv, 0)
    if version != VERSION:
        raise SchemaError(f"WAL batch format version {version} is not supported by this fstore (knows {VERSION})")
    b = Batch(now, n)
    pos = _align(_HEAD.size)
    for _ in range(ncols):
        role, nlen = struct.unpack_from("<BH", mv, pos)
        name = bytes(mv[pos + 3:pos + 3 + nlen]).decode()
        pos = _align(pos + 3 + nlen)
        kind = mv[pos]
        if kind == 1:
            pos += 8
            valid = np.frombuffer(mv, np.uint8, n, pos)
            pos = _align(pos + n)
            ends = np.frombuffer(mv, "<u8", n, pos)
            pos += 8 * n
            text = bytes(mv[pos:pos + (int(ends[-1]) if n else 0)])
            starts = np.concatenate(([0], ends[:-1])).astype(np.int64) if n else ends
            a = np.empty(n, dtype=object)
            for i in range(n):
                a[i] = text[starts[i]:ends[i]].decode() if valid[i] else None
            pos = _align(pos + len(text))
        else:
            ndim = mv[pos + 1]
            shape = struct.unpack_from(f"<{ndim}I", mv, pos + 2)
            dlen = mv[pos + 2 + 4 * ndim]
            dtype = np.dtype(bytes(mv[pos + 3 + 4 * ndim:pos + 3 + 4 * ndim + dlen]).decode())
            pos = _align(pos + 3 + 4 * ndim + dlen)
            count = int(np.prod(shape)) if ndim else 1
            a = np.frombuffer(mv, dtype, count, pos).reshape(shape)
            pos = _align(pos + a.nbytes)
        if role == ROLE_KEY:
            b.keys[name] = a
        elif role == ROLE_VALUE:
            b.values[name] = a
        elif role == ROLE_NULL:
            b.nulls[name] = a
        elif role == ROLE_EVENT_TS:
            b.event_ts = a
        else:
            b.created_ts = a
    (olen,) = struct.unpack_from("<I", mv, pos)
    if olen:
        b.offsets = json.loads(bytes(mv[pos + 4:pos + 4 + olen]))
    return b


def _align(n: int) -> int:
    return (n + 7) & ~7
