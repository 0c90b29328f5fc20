"""Pure-Python twin of the WAL record codec and segment scanner (c/record.c,
fscore.walread), used as the test oracle. Written for clarity, not speed.

    record := crc32c:u32 | length:u32 | type:u8 | lsn:u64 | payload[length]
    (little-endian; crc32c over every byte after the crc field)
"""
from __future__ import annotations

import struct

HEADER = struct.Struct("<IIBQ")  # crc, length, type, lsn
HEADER_BYTES = HEADER.size  # 17
MAX_PAYLOAD = 1 << 30

_POLY = 0x82F63B78  # reflected Castagnoli polynomial
_TABLE = []
for _i in range(256):
    _c = _i
    for _ in range(8):
        _c = (_c >> 1) ^ (_POLY if _c & 1 else 0)
    _TABLE.append(_c)


def crc32c(data: bytes, crc: int = 0) -> int:
    crc ^= 0xFFFFFFFF
    for b in data:
        crc = (crc >> 8) ^ _TABLE[(crc ^ b) & 0xFF]
    return crc ^ 0xFFFFFFFF


def encode_record(rtype: int, lsn: int, payload: bytes) -> bytes:
    if not 1 <= rtype <= 255:
        raise ValueError(f"record type must be 1..255 (0 is reserved), got {rtype}")
    body = struct.pack("<IBQ", len(payload), rtype, lsn) + bytes(payload)
    return struct.pack("<I", crc32c(body)) + body


def decode_record(data: bytes, offset: int = 0):
    """Same verdicts as fscore.wal.decode_record: ("ok", lsn, type, payload,
    next) or ("torn" | "corrupt" | "zero", None, None, None, offset)."""
    bad = lambda status: (status, None, None, None, offset)  # noqa: E731
    rest = bytes(data[offset:])
    if len(rest) < HEADER_BYTES:
        return bad("zero" if not any(rest) else "torn")
    if not any(rest[:HEADER_BYTES]):
        return bad("zero")
    crc, length, rtype, lsn = HEADER.unpack_from(rest)
    if length > MAX_PAYLOAD or rtype == 0:
        return bad("corrupt")
    if HEADER_BYTES + length > len(rest):
        return bad("torn")
    if crc32c(rest[4:HEADER_BYTES + length]) != crc:
        return bad("corrupt")
    return ("ok", lsn, rtype, rest[HEADER_BYTES:HEADER_BYTES + length], offset + HEADER_BYTES + length)


def scan_segment(data: bytes, first_lsn: int):
    """(records, verdict, offset): the records read in order, then how the
    segment ended: "end" (zeros or nothing left), "torn" (a bad record with no
    valid one after it), "corrupt" (a valid record follows), "lsn" (a valid
    record out of sequence); offset is where reading stopped."""
    records, off, expect = [], 0, first_lsn
    while True:
        status, lsn, rtype, payload, nxt = decode_record(data, off)
        if status == "ok":
            if lsn != expect:
                return records, "lsn", off
            records.append((lsn, rtype, payload))
            off, expect = nxt, expect + 1
            continue
        if not any(data[off:]):
            return records, "end", off
        for later in range(off + 1, len(data)):
            s, lsn2, *_ = decode_record(data, later)
            if s == "ok" and lsn2 > expect - 1:
                return records, "corrupt", off
        return records, "torn", off
