"""Checkpoints: a consistent snapshot (named blobs + JSON meta) at a WAL LSN.

File `checkpoint-<lsn, 20 digits>.ckpt` in the store directory::

    file    := magic header_len:u32 header pad blob* footer
    magic   := "FSCKPT\\x00\\x01"
    header  := JSON utf-8: {"version": 1, "lsn": int, "meta": {...},
               "blobs": [{"name", "kind": "bytes"|"array", "dtype", "shape",
                          "offset", "nbytes"}]}     offsets from file start
    pad     := zero bytes up to a 64-byte boundary (each blob starts aligned)
    footer  := crc32c:u32 body_len:u64 "FSCKEND\\x01"
               crc32c over every byte before the footer; body_len = that count

Protocol: write `<name>.tmp-<pid>-<n>` -> fsync -> rename to the final name ->
fsync the directory. A crash leaves either the previous set of checkpoints or
the new one complete; a stray .tmp file is ignored and removed by the next
write. A file that fails its checks (torn, bit rot) is skipped with a warning
and the previous checkpoint is used; the WAL is kept back to the oldest
retained checkpoint so that fallback can still replay.

`write_checkpoint` only reads its arguments, so a caller can pass a copy of
the table buffer and run it on a background thread: readers of the live table
are never blocked (file I/O and the checksum release the GIL).
"""
from __future__ import annotations

import itertools
import json
import logging
import mmap
import os
import re
import struct
from typing import NamedTuple

import numpy as np

from fscore.errors import CheckpointError
from fscore.proc import pid_alive
from fscore.walread import crc32c

MAGIC = b"FSCKPT\x00\x01"
END_MAGIC = b"FSCKEND\x01"
FOOTER = struct.Struct("<IQ8s")
ALIGN = 64
_NAME_RE = re.compile(r"^checkpoint-(\d{20})\.ckpt$")
_TMP_RE = re.compile(r"^checkpoint-\d{20}\.ckpt\.tmp-")
_tmp_counter = itertools.count()
log = logging.getLogger("fscore.checkpoint")


class Checkpoint(NamedTuple):
    lsn: int
    blobs: dict  # name -> bytes or numpy array (views into one buffer)
    meta: dict


def checkpoint_name(lsn: int) -> str:
    return f"checkpoint-{lsn:020d}.ckpt"


def list_checkpoints(dir) -> list[tuple[int, str]]:
    """[(lsn, path)] of the checkpoint files in `dir`, oldest first."""
    try:
        names = os.listdir(dir)
    except FileNotFoundError:
        return []
    return sorted((int(m.group(1)), os.path.join(dir, n)) for n in names if (m := _NAME_RE.match(n)))


def fsync_dir(dir) -> None:
    fd = os.open(dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _blob_bytes(name: str, value) -> tuple[dict, memoryview]:
    if hasattr(value, "chunks") and hasattr(value, "nbytes"):  # streamed (WindowView.snapshot()): bytes as written
        return {"name": name, "kind": "bytes", "nbytes": int(value.nbytes)}, value
    if isinstance(value, (bytes, bytearray, memoryview)):
        mv = memoryview(value).cast("B")
        return {"name": name, "kind": "bytes", "nbytes": mv.nbytes}, mv
    if isinstance(value, np.ndarray):
        if value.dtype.hasobject:
            raise CheckpointError(f"blob {name!r}: object arrays cannot be checkpointed; encode them to bytes")
        a = np.ascontiguousarray(value)
        return ({"name": name, "kind": "array", "dtype": a.dtype.str, "shape": list(a.shape), "nbytes": a.nbytes},
                memoryview(a.reshape(-1).view(np.uint8)))
    raise CheckpointError(f"blob {name!r} must be bytes or a numpy array, got {type(value).__name__}")


def write_checkpoint(dir, lsn: int, blobs: dict, meta: dict | None = None, *, keep: int = 2) -> str:
    """Writes a checkpoint durably and atomically; returns its path. Keeps the
    `keep` newest checkpoints and deletes older ones (and stale temp files)."""
    if keep < 1:
        raise ValueError(f"keep must be >= 1, got {keep}")
    tmp = temp_path(dir, lsn)
    write_temp(tmp, lsn, blobs, meta)
    return commit(tmp, keep=keep)


def temp_path(dir, lsn: int) -> str:
    """A fresh temporary name for checkpoint `lsn` in `dir`, owned by this
    process (`_prune` leaves a live process's temp files alone)."""
    if lsn < 0:
        raise CheckpointError(f"checkpoint LSN must be >= 0, got {lsn}")
    return f"{os.path.join(dir, checkpoint_name(lsn))}.tmp-{os.getpid()}-{next(_tmp_counter)}"


def commit(tmp: str, *, keep: int = 2) -> str:
    """Renames a temporary checkpoint written by `write_temp` into place,
    makes the rename durable and prunes; returns the final path."""
    final = tmp.rsplit(".tmp-", 1)[0]
    dir = os.path.dirname(final) or "."
    try:
        os.rename(tmp, final)
        fsync_dir(dir)
    except OSError as e:
        _unlink_quietly(tmp)
        raise CheckpointError(f"writing checkpoint {final} failed: {e}") from e
    _prune(dir, keep)
    return final


def write_temp(tmp: str, lsn: int, blobs: dict, meta: dict | None = None) -> None:
    """Writes checkpoint `lsn` to the temporary path `tmp` (from `temp_path`)
    and fsyncs it; nothing is in place until `commit`. Only reads its
    arguments: a forked child can run it on its copy of the state. A blob
    may be bytes, an array, or streamed: `.nbytes` and `.chunks()` (written
    as produced, so the file never needs the encoded state in memory)."""
    parts = [_blob_bytes(name, value) for name, value in blobs.items()]
    entries, offset = [], 0
    try:
        header = json.dumps({"version": 1, "lsn": lsn, "meta": meta or {}, "blobs": []})
    except TypeError as e:
        raise CheckpointError(f"checkpoint meta must be JSON-serialisable: {e}") from e
    # Offsets depend on the header's length, which depends on the offsets:
    # iterate until the header stops growing (two rounds in practice).
    header_bytes = header.encode()
    while True:
        offset = _align(len(MAGIC) + 4 + len(header_bytes))
        entries = []
        for entry, mv in parts:
            entries.append(dict(entry, offset=offset))
            offset = _align(offset + mv.nbytes)
        new = json.dumps({"version": 1, "lsn": lsn, "meta": meta or {}, "blobs": entries}).encode()
        if len(new) == len(header_bytes):
            header_bytes = new
            break
        header_bytes = new
    final = tmp.rsplit(".tmp-", 1)[0]
    os.makedirs(os.path.dirname(final) or ".", exist_ok=True)
    try:
        with open(tmp, "wb") as f:
            crc, pos = 0, 0

            def emit(data) -> None:
                nonlocal crc, pos
                f.write(data)
                crc = crc32c(data, crc)
                pos += len(data) if isinstance(data, bytes) else memoryview(data).nbytes

            emit(MAGIC + struct.pack("<I", len(header_bytes)) + header_bytes)
            for entry, (_, mv) in zip(entries, parts):
                emit(bytes(entry["offset"] - pos))
                if isinstance(mv, memoryview):
                    emit(mv)
                    continue
                start = pos
                for chunk in mv.chunks():  # a streamed blob: written as it is encoded
                    emit(chunk)
                if pos - start != entry["nbytes"]:
                    raise CheckpointError(f"blob {entry['name']!r} streamed {pos - start} bytes, "
                                          f"announced {entry['nbytes']}")
            emit(bytes(_align(pos) - pos))
            f.write(FOOTER.pack(crc, pos, END_MAGIC))
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        _unlink_quietly(tmp)
        raise CheckpointError(f"writing checkpoint {final} failed: {e}") from e


def _align(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _prune(dir, keep: int) -> None:
    for _, path in list_checkpoints(dir)[:-keep]:
        _unlink_quietly(path)
    for name in os.listdir(dir):
        # Only a dead process's temp files: a live one may still be writing
        # (and our own failed writes remove theirs).
        if _TMP_RE.match(name):
            pid = name.rsplit(".tmp-", 1)[1].split("-")[0]
            if pid.isdigit() and int(pid) != os.getpid() and not pid_alive(int(pid)):
                _unlink_quietly(os.path.join(dir, name))


READ_CHUNK = 1 << 30  # bytes per read: Linux returns at most ~2 GiB from one read(2)


def read_whole(f, buf) -> int:
    """Fills `buf` from `f` with as many reads as it takes (a read may return
    fewer bytes than asked: Linux caps one read(2) at 0x7ffff000 bytes, so a
    checkpoint over 2 GiB was never loaded). Returns the bytes read (less than
    len(buf) only at end of file)."""
    mv = memoryview(buf).cast("B")
    pos = 0
    while pos < len(mv):
        n = f.readinto(mv[pos:pos + READ_CHUNK])
        if not n:
            break
        pos += n
    return pos


def load_checkpoint(path: str) -> Checkpoint:
    """Reads and verifies one checkpoint file; CheckpointError if it is torn,
    damaged, or not a checkpoint."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb", buffering=0) as f:
            if size >= len(MAGIC) + 4 + FOOTER.size:
                # Mapped, not read: the file's pages are page cache the kernel
                # may drop, not a second copy of the state in the process (a
                # 10M-key restart read 11.4 GB into memory beside the 13.6 GB
                # it rebuilt). Checkpoints are renamed into place whole, never
                # rewritten, so the mapping cannot change under the readers.
                buf = memoryview(mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ))
                got = size
            else:
                buf = memoryview(np.empty(size, dtype=np.uint8))
                got = read_whole(f, buf)
    except (OSError, ValueError) as e:
        raise CheckpointError(f"cannot read checkpoint {path}: {e}") from e
    if got != size or size < len(MAGIC) + 4 + FOOTER.size or bytes(buf[:len(MAGIC)]) != MAGIC:
        raise CheckpointError(f"{path} is not a complete checkpoint (bad magic or size {size})")
    crc, body_len, end = FOOTER.unpack_from(buf, size - FOOTER.size)
    if end != END_MAGIC or body_len != size - FOOTER.size:
        raise CheckpointError(f"{path} is torn: footer missing or its length {body_len} != {size - FOOTER.size}")
    body = buf[:body_len]
    if crc32c(body) != crc:
        raise CheckpointError(f"{path} fails its checksum: the file is damaged")
    (hlen,) = struct.unpack_from("<I", buf, len(MAGIC))
    try:
        header = json.loads(bytes(body[len(MAGIC) + 4:len(MAGIC) + 4 + hlen]))
    except ValueError as e:
        raise CheckpointError(f"{path}: unreadable header: {e}") from e
    blobs = {}
    for b in header["blobs"]:
        start, n = b["offset"], b["nbytes"]
        if b["kind"] == "bytes":
            blobs[b["name"]] = body[start:start + n]  # a view, not a copy: the readers copy what they keep
        else:
            dtype = np.dtype(b["dtype"])
            count = n // dtype.itemsize if dtype.itemsize else 0
            blobs[b["name"]] = np.frombuffer(buf, dtype=dtype, count=count, offset=start).reshape(b["shape"])
    return Checkpoint(header["lsn"], blobs, header["meta"])


def load_latest_checkpoint(dir) -> Checkpoint | None:
    """The newest checkpoint that verifies, or None if there is none. Damaged
    ones are skipped with a warning (the WAL still reaches back to older ones)."""
    for lsn, path in reversed(list_checkpoints(dir)):
        try:
            return load_checkpoint(path)
        except CheckpointError as e:
            log.warning("skipping checkpoint at LSN %d: %s", lsn, e)
    return None


def oldest_retained_lsn(dir) -> int | None:
    """LSN of the oldest checkpoint file present: the WAL must be kept from here."""
    found = list_checkpoints(dir)
    return found[0][0] if found else None
