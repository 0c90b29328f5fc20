"""The engine's WAL records (payloads of `fscore.wal` records).

    REC_PUSH     u32 head_len | head JSON | Arrow IPC stream of the batch
                 head: {"stream", "now", "seq", "offsets", "key"?, "offline"?, "parts"?}
                 the batch as normalised to the stream's declared types;
                 `now` the engine clock it was applied at, `seq` the offline
                 sequence number of its first row, `key` the push's
                 idempotency key (absent without one), `offline` false
                 for a source's replay of events the offline log holds
                 already (they take no sequence numbers), `parts` the
                 Kafka partition of each row, run-length encoded
                 ([[partition, rows], ...] in row order; absent for a push
                 without partitions): lateness is judged per partition
    REC_OFFSETS  JSON {"offsets": {"<topic>/<partition>": next offset}}:
                 source offsets consumed without rows (dead letters)
    REC_ABORT    JSON {"lsn": N, "reason": "..."}: the record at LSN N was
                 logged but could not be applied; recovery skips it

A push is validated completely before it is logged (fsapp.engine.prepare),
so applying a logged push does not fail; REC_ABORT is the safety net for a
failure found only while applying (a bug), so that the log never holds a
record recovery cannot get past.
"""
from __future__ import annotations

import json
import struct

import numpy as np
import pyarrow as pa

from fsapp.engine.ingest import arrow_ipc_bytes

REC_PUSH = 1
REC_OFFSETS = 2
REC_ABORT = 3


def encode_push(stream: str, now: int, seq: int, table: pa.Table, offsets: dict | None,
                key: str | None = None, offline: bool = True, parts: np.ndarray | None = None) -> bytes:
    head = {"stream": stream, "now": now, "seq": seq, "offsets": offsets or {}}
    if key is not None:
        head["key"] = key
    if not offline:
        head["offline"] = False
    if parts is not None and len(parts):
        head["parts"] = encode_runs(parts)
    h = json.dumps(head).encode()
    return struct.pack("<I", len(h)) + h + arrow_ipc_bytes(table)


def decode_push(payload) -> tuple[dict, pa.Table]:
    mv = memoryview(payload)
    (n,) = struct.unpack_from("<I", mv, 0)
    head = json.loads(bytes(mv[4:4 + n]))
    return head, pa.ipc.open_stream(pa.py_buffer(mv[4 + n:])).read_all()


def encode_runs(parts: np.ndarray) -> list[list[int]]:
    """[[value, count], ...] of an int array's runs, in order."""
    p = np.asarray(parts, dtype=np.int64)
    starts = np.flatnonzero(np.concatenate([[True], p[1:] != p[:-1]]))
    counts = np.diff(np.concatenate([starts, [p.size]]))
    return [[int(v), int(c)] for v, c in zip(p[starts].tolist(), counts.tolist())]


def decode_runs(runs) -> np.ndarray:
    """The int64 array `encode_runs` encoded."""
    if not runs:
        return np.zeros(0, dtype=np.int64)
    values, counts = zip(*runs)
    return np.repeat(np.asarray(values, dtype=np.int64), np.asarray(counts, dtype=np.int64))


def encode_offsets(offsets: dict) -> bytes:
    return json.dumps({"offsets": offsets}).encode()


def decode_offsets(payload) -> dict:
    return json.loads(bytes(payload))["offsets"]


def encode_abort(lsn: int, reason: str) -> bytes:
    return json.dumps({"lsn": int(lsn), "reason": reason[:2000]}).encode()


def decode_abort(payload) -> int:
    return int(json.loads(bytes(payload))["lsn"])
