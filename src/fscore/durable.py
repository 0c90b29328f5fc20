"""DurableTable: an online `Table` whose every write is in the WAL first.

Layout of a store directory::

    <dir>/store.json                    schema, capacity, TTL: fixed at creation
    <dir>/checkpoint-<lsn>.ckpt         table snapshots (fscore.checkpoint)
    <dir>/wal/<first lsn>.wal           the log (fscore.wal)

A write (`put_batch`, `delete_batch`, `expire`) is validated, encoded as one
WAL record, appended (durable under the fsync policy when the call returns),
then applied to the table. Concurrent writers share fsyncs (group commit) and
are applied in LSN order, so the table always equals "checkpoint + the log
replayed in order": `open` rebuilds exactly that. Source offsets (Kafka) ride
in the same record as the rows they produced, so a restart neither loses nor
double-counts an event.

Reads go straight to `table` (`get_batch`, `get`); nothing here blocks them.
"""
from __future__ import annotations

import json
import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor

from fscore import _batch, walbatch
from fscore.checkpoint import load_latest_checkpoint, oldest_retained_lsn, write_checkpoint
from fscore.errors import CheckpointError, KeyEncodingError, SchemaError, WalCorruption
from fscore.schema import Schema
from fscore.table import Table
from fscore.wal import DEFAULT_SEGMENT_BYTES, RecoveryPolicy, Wal, read_log

TABLE_BLOB = "table"


class DurableTable:
    """Table + WAL + checkpoints. Build one with `DurableTable.open`."""

    def __init__(self, dir: str, schema: Schema, table: Table, wal: Wal, checkpoint_lsn: int,
                 offsets: dict, keep_checkpoints: int):
        self.dir = dir
        self.schema = schema
        self.table = table
        self.wal = wal
        self.checkpoint_lsn = checkpoint_lsn
        self.replayed = 0
        self._offsets = dict(offsets)
        self._keep = keep_checkpoints
        self._applied_lsn = checkpoint_lsn
        self._apply_cond = threading.Condition()
        self._checkpoint_lock = threading.Lock()
        self._executor: ThreadPoolExecutor | None = None

    # ---- opening = recovery

    @classmethod
    def open(cls, dir, schema: Schema, *, capacity: int | None = None, max_bytes: int | None = None,
             ttl_us: int = 0, table_path=None, fsync: str = "always", interval_ms: float = 10,
             segment_bytes: int = DEFAULT_SEGMENT_BYTES, recovery=RecoveryPolicy.TOLERATE_TAIL,
             keep_checkpoints: int = 2, fsync_fn=None) -> "DurableTable":
        """Opens (creating if needed) the store in `dir`: loads the newest good
        checkpoint, truncates a torn WAL tail, replays the log after it.
        Capacity, max_bytes and TTL apply to a new store; an existing one
        keeps those it was created with (store.json)."""
        dir = os.fspath(dir)
        os.makedirs(dir, exist_ok=True)
        conf = _store_config(dir, schema, {"capacity": capacity, "max_bytes": max_bytes, "ttl_us": ttl_us})
        ckpt = load_latest_checkpoint(dir)
        if ckpt is None:
            table = Table(schema, capacity=conf["capacity"], max_bytes=conf["max_bytes"], ttl_us=conf["ttl_us"],
                          path=table_path)
            lsn0, offsets = 0, {}
        else:
            if ckpt.meta.get("schema") != schema.to_json():
                raise CheckpointError(f"checkpoint at LSN {ckpt.lsn} in {dir} holds schema {ckpt.meta.get('schema')}, "
                                      f"not {schema.to_json()}")
            table = Table.from_snapshot(ckpt.blobs[TABLE_BLOB], path=table_path)
            lsn0, offsets = ckpt.lsn, ckpt.meta.get("offsets", {})
        wal_dir = os.path.join(dir, "wal")
        wal = Wal(wal_dir, fsync, interval_ms=interval_ms, segment_bytes=segment_bytes, recovery=recovery,
                  start_lsn=lsn0 + 1, fsync_fn=fsync_fn)
        try:
            if wal.last_lsn < lsn0:
                raise WalCorruption(f"the WAL in {wal_dir} ends at LSN {wal.last_lsn} but the checkpoint is at "
                                    f"LSN {lsn0}: log segments were lost. Move the wal directory aside to start "
                                    f"from the checkpoint alone.", wal_dir, -1)
            store = cls(dir, schema, table, wal, lsn0, offsets, keep_checkpoints)
            for lsn, rtype, payload in read_log(wal_dir, lsn0, recovery):
                store._apply_record(rtype, walbatch.decode(payload), replay=True)
                store._applied_lsn = lsn
                store.replayed += 1
            if store._applied_lsn != wal.last_lsn:
                raise WalCorruption(f"replay of {wal_dir} stopped at LSN {store._applied_lsn}, but the log "
                                    f"ends at {wal.last_lsn}", wal_dir, -1)
        except BaseException:
            wal.close()
            raise
        return store

    # ---- writes

    def put_batch(self, keys, values=None, event_ts=None, created_ts=None, *, now: int, nulls=None,
                  source_offsets: dict | None = None) -> int:
        """Logs then applies a batch of rows (Table.put_batch's arguments);
        returns its LSN. `source_offsets` (e.g. {"topic/partition": offset})
        are stored with the rows and restored with them."""
        b = self._normalise_keys(keys, now)
        ets, cts = _batch.timestamps(event_ts, created_ts, b.n)
        vals, masks = _batch.value_columns(self.schema, values, b.n, nulls)
        for f, a, m in zip(self.schema.columns, vals, masks):
            if f.kind == "string":
                for s, null in zip(a, m):
                    if not null:
                        _batch.check_string(f, s)
            b.values[f.name] = a
            b.nulls[f.name] = m
        b.event_ts = ets
        b.created_ts = None if created_ts is None else cts
        b.offsets = dict(source_offsets or {})
        return self._log_and_apply(walbatch.REC_PUT, b)

    def delete_batch(self, keys) -> int:
        """Logs then applies a delete of the given keys; returns its LSN."""
        return self._log_and_apply(walbatch.REC_DELETE, self._normalise_keys(keys, 0))

    def expire(self, now: int) -> int:
        """Logs then applies `Table.expire(now)` (expiry changes which rows
        eviction picks later, so replay must see it too); returns its LSN."""
        return self._log_and_apply(walbatch.REC_EXPIRE, walbatch.Batch(now, 0))

    def _normalise_keys(self, keys, now: int) -> walbatch.Batch:
        cols, n = _batch.key_columns(self.schema, keys)
        b = walbatch.Batch(now, n)
        for f, a in zip(self.schema.keys, cols):
            if f.kind == "string":
                for s in a:
                    if not isinstance(s, str) or len(s.encode()) > f.size:
                        raise KeyEncodingError(f"key column {f.name!r}: {s!r} is not a string of at most "
                                               f"{f.size} UTF-8 bytes")
            b.keys[f.name] = a
        return b

    def _log_and_apply(self, rtype: int, b: walbatch.Batch) -> int:
        lsn = self.wal.append(rtype, walbatch.encode(b))
        # Appends complete out of order under group commit; apply in LSN order
        # so the live table equals the replayed one.
        with self._apply_cond:
            while self._applied_lsn != lsn - 1:
                self._apply_cond.wait()
            try:
                self._apply_record(rtype, b, replay=False)
            finally:
                self._applied_lsn = lsn
                self._apply_cond.notify_all()
        return lsn

    def _apply_record(self, rtype: int, b: walbatch.Batch, replay: bool) -> None:
        try:
            if rtype == walbatch.REC_PUT:
                self.table.put_batch(_keys_arg(self.schema, b.keys), b.values, b.event_ts, b.created_ts, now=b.now, nulls=b.nulls)
                self._offsets.update(b.offsets)
            elif rtype == walbatch.REC_DELETE:
                self.table.delete_batch(_keys_arg(self.schema, b.keys))
            elif rtype == walbatch.REC_EXPIRE:
                self.table.expire(b.now)
            else:
                raise WalCorruption(f"unknown record type {rtype} in the WAL of {self.dir}", self.dir, -1)
        except (SchemaError, KeyEncodingError):
            # Validation runs before logging, so this is a rule the table has
            # and the validation missed. Live, the caller sees the error; on
            # replay the same call fails the same way, so skipping keeps
            # replay == live.
            if not replay:
                raise

    # ---- checkpoints

    def checkpoint(self, background: bool = False) -> int | Future:
        """Snapshots the table at the last applied LSN and writes it durably
        (returns that LSN), then deletes WAL segments no retained checkpoint
        needs. Writes pause only for the in-memory copy; reads never do. With
        background=True the file is written on a worker thread and a Future
        of the LSN is returned."""
        with self._checkpoint_lock:
            with self._apply_cond:
                snap = self.table.snapshot()
                lsn = self._applied_lsn
                offsets = dict(self._offsets)
        # The log must be durable up to the checkpoint: otherwise a crash could
        # leave a checkpoint ahead of the log, and new records would reuse LSNs
        # that replay skips.
        self.wal.sync()
        meta = {"schema": self.schema.to_json(), "offsets": offsets}

        def write() -> int:
            with self._checkpoint_lock:
                write_checkpoint(self.dir, lsn, {TABLE_BLOB: snap}, meta, keep=self._keep)
                oldest = oldest_retained_lsn(self.dir)
                if oldest is not None:
                    self.wal.truncate_before(oldest)
                self.checkpoint_lsn = max(self.checkpoint_lsn, lsn)
            return lsn

        if not background:
            return write()
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fscore-checkpoint")
        return self._executor.submit(write)

    # ---- reads and lifecycle

    @property
    def last_lsn(self) -> int:
        """LSN of the last write applied to the table."""
        return self._applied_lsn

    @property
    def source_offsets(self) -> dict:
        """Source offsets of the writes applied so far (restored on open)."""
        with self._apply_cond:
            return dict(self._offsets)

    def get_batch(self, keys, now: int):
        return self.table.get_batch(keys, now)

    def get(self, key, now: int):
        return self.table.get(key, now)

    def __len__(self) -> int:
        return len(self.table)

    def close(self) -> None:
        """Waits for a background checkpoint, then closes the WAL and table."""
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
        self.wal.close()
        self.table.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _keys_arg(schema: Schema, keys: dict):
    return keys[schema.keys[0].name] if len(schema.keys) == 1 else keys


def _store_config(dir: str, schema: Schema, table_args: dict) -> dict:
    """The store's fixed settings: written (atomically) when the store is
    created, read back and checked against `schema` when it is reopened."""
    path = os.path.join(dir, "store.json")
    if os.path.exists(path):
        with open(path) as f:
            conf = json.load(f)
        if Schema.from_json(conf["schema"]) != schema:
            raise SchemaError(f"the store in {dir} was created with schema {conf['schema']}; you opened it with "
                              f"{schema.to_json()}. Open it with its own schema or use a new directory.")
        return conf
    conf = dict(table_args, schema=schema.to_json())
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(conf, f)
        f.flush()
        os.fsync(f.fileno())
    os.rename(tmp, path)
    fd = os.open(dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return conf


__all__ = ["DurableTable", "RecoveryPolicy"]
