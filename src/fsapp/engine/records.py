"""The engine's WAL records (payloads of `fscore.wal` records).

    REC_PUSH     u32 head_len | head JSON | Arrow IPC stream of the batch
                 head: {"stream", "now", "seq", "offsets", "key"?, "offline"?}
                 the batch as normalised to the stream's declared types;
                 `now` the engine clock it was applied at, `seq` the offline
                 sequence number of its first row, `key` the push's
                 idempotency key (absent without one), `offline` false
                 for a source's replay of events the offline log holds
                 already (they take no sequence numbers)
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

import pyarrow as pa

from fsapp.engine.ingest import arrow_ipc_bytes

REC_PUSH = 1
REC_OFFSETS = 2
REC_ABORT = 3


def encode_push(stream: str, now: int, seq: int, table: pa.Table, offsets: dict | None,
                key: str | None = None, offline: bool = True) -> bytes:
    head = {"stream": stream, "now": now, "seq": seq, "offsets": offsets or {}}
    if key is not None:
        head["key"] = key
    if not offline:
        head["offline"] = False
    h = json.dumps(head).encode()
    return struct.pack("<I", len(h)) + h + arrow_ipc_bytes(table)


def decode_push(payload) -> tuple[dict, pa.Table]:
    mv = memoryview(payload)
    (n,) = struct.unpack_from("<I", mv, 0)
    head = json.loads(bytes(mv[4:4 + n]))
    return head, pa.ipc.open_stream(pa.py_buffer(mv[4 + n:])).read_all()


def encode_offsets(offsets: dict) -> bytes:
    return json.dumps({"offsets": offsets}).encode()


def decode_offsets(payload) -> dict:
    return json.loads(bytes(payload))["offsets"]


def encode_abort(lsn: int, reason: str) -> bytes:
    return json.dumps({"lsn": int(lsn), "reason": reason[:2000]}).encode()


def decode_abort(payload) -> int:
    return int(json.loads(bytes(payload))["lsn"])
