"""WAL durable appends/s vs SQLite, same disk, same run.

- fsync="always" with 8 writer threads (the default group commit, and with
  max_syncers=1, i.e. without overlapping fsyncs, for comparison), each appending a ~100-byte record and
  waiting until it is durable, vs SQLite in WAL mode with synchronous=FULL,
  8 threads each with its own connection, one row per transaction.
- One writer at fsync="never" vs SQLite synchronous=OFF (the cost of the
  append path itself: encode + CRC + write, no flush).

FSTORE_BENCH_DIR picks the directory (default: the system temp dir); the WAL
and SQLite files share it so they share the disk.
"""
from __future__ import annotations

import os
import shutil
import sqlite3
import tempfile
import threading
import time

from benches._common import Row
from fscore.wal import Wal

RECORD = b"r" * 100
THREADS = 8


def _run_threads(n_threads: int, seconds: float, body) -> float:
    """Runs body(stop) in n threads for `seconds`; returns total ops/s."""
    stop = threading.Event()
    counts = [0] * n_threads
    start = threading.Barrier(n_threads + 1)

    def worker(i):
        start.wait()
        counts[i] = body(stop)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(n_threads)]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join()
    return sum(counts) / (time.perf_counter() - t0)


def wal_appends_per_s(dir: str, fsync: str, n_threads: int, seconds: float, stats=None, **kw) -> float:
    """ops/s; `stats` (a dict) receives the WAL's group-commit counters."""
    tag = "-".join(f"{k}{v}" for k, v in sorted(kw.items()))
    wal = Wal(os.path.join(dir, f"wal-{fsync}-{n_threads}-{tag}"), fsync, **kw)

    def body(stop):
        n = 0
        while not stop.is_set():
            wal.append(1, RECORD)
            n += 1
        return n

    try:
        return _run_threads(n_threads, seconds, body)
    finally:
        if stats is not None:
            stats.update(wal.stats())
        wal.close()


def sqlite_tx_per_s(dir: str, synchronous: str, n_threads: int, seconds: float) -> float:
    path = os.path.join(dir, f"sqlite-{synchronous}-{n_threads}.db")
    con = sqlite3.connect(path)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("CREATE TABLE log (id INTEGER PRIMARY KEY, v BLOB)")
    con.commit()
    con.close()

    def body(stop):
        c = sqlite3.connect(path, isolation_level=None, timeout=60, check_same_thread=False)
        c.execute(f"PRAGMA synchronous={synchronous}")
        c.execute("PRAGMA busy_timeout=60000")
        n = 0
        while not stop.is_set():
            c.execute("INSERT INTO log (v) VALUES (?)", (RECORD,))  # autocommit: one row per transaction
            n += 1
        c.close()
        return n

    return _run_threads(n_threads, seconds, body)


def run(quick: bool) -> list[Row]:
    seconds = 1.0 if quick else 3.0
    base = os.environ.get("FSTORE_BENCH_DIR") or None
    dir = tempfile.mkdtemp(prefix="fstore-bench-wal-", dir=base)
    try:
        st, st1 = {}, {}
        always = wal_appends_per_s(dir, "always", THREADS, seconds, st)
        group = st["synced_records"] / max(st["fsyncs"], 1)
        serial = wal_appends_per_s(dir, "always", THREADS, seconds, st1, max_syncers=1, commit_delay_us=0)
        sql_full = sqlite_tx_per_s(dir, "FULL", THREADS, seconds)
        never = wal_appends_per_s(dir, "never", 1, seconds)
        sql_off = sqlite_tx_per_s(dir, "OFF", 1, seconds)
    finally:
        shutil.rmtree(dir, ignore_errors=True)
    return [
        Row("wal", f"durable appends/s, fsync=always, {THREADS} threads (~{group:.1f} records/fsync, "
                   f"<= {st['max_overlap']} fsyncs in flight)", always,
            "sqlite WAL sync=FULL", sql_full, "ops/s", better="higher", target=">= 10x"),
        Row("wal", f"  same, max_syncers=1 (no overlapping fsyncs, "
                   f"~{st1['synced_records'] / max(st1['fsyncs'], 1):.1f} records/fsync)", serial,
            "sqlite WAL sync=FULL", sql_full, "ops/s", better="higher"),
        Row("wal", "appends/s, fsync=never, 1 thread", never,
            "sqlite WAL sync=OFF", sql_off, "ops/s", better="higher"),
    ]
