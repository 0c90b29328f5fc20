"""`fstore demo`: the store core end to end on a temporary directory.

1. a durable online table (WAL at fsync=always + shared-memory table file),
2. rows written in batches by this process (the single writer),
3. reader processes mapping the same file, measuring lookup latency and
   checking every row they read,
4. a checkpoint, then a writer child killed with SIGKILL mid-stream, and
   recovery showing that every acknowledged row survived.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import shutil
import signal
import statistics
import tempfile
import time

import numpy as np

from fscore.durable import DurableTable
from fscore.schema import Schema
from fscore.table import PRESENT, Table

SCHEMA = Schema([("user_id", "int64")],
                [("txn_count_1h", "int64"), ("amount_sum_24h", "float64"), ("is_premium", "bool"),
                 ("country", "string", 8), ("embedding", "vector", 4)])
HOUR_US = 3_600_000_000
CRASH_ROWS = 50_000
COUNTRIES = np.array(["US", "DE", "FR", "BR", "IN", "JP"], dtype=object)


def _batch(rng, keys, now):
    n = len(keys)
    counts = rng.poisson(3, n)
    return ({"txn_count_1h": counts, "amount_sum_24h": np.round(counts * rng.gamma(2.0, 20.0, n), 2),
             "is_premium": rng.random(n) < 0.1, "country": COUNTRIES[rng.integers(0, len(COUNTRIES), n)],
             "embedding": rng.standard_normal((n, 4)).astype(np.float32)},
            np.full(n, now, dtype=np.int64))


def _reader(path, nkeys, seconds, out):
    table = Table.open_reader(path)
    rng = np.random.default_rng(os.getpid())
    single, batch, bad, seen = [], [], 0, 0
    stop = time.monotonic() + seconds
    while time.monotonic() < stop:
        k = int(rng.integers(0, nkeys))
        t0 = time.perf_counter_ns()
        row = table.get(k, now=time.time_ns() // 1000)
        single.append(time.perf_counter_ns() - t0)
        keys = rng.integers(0, nkeys, 100)
        t0 = time.perf_counter_ns()
        r = table.get_batch(keys, now=time.time_ns() // 1000)
        batch.append(time.perf_counter_ns() - t0)
        ok = r.status == PRESENT
        seen += int(ok.sum())
        # every present row must be whole: sum >= 0 and count >= 0, known country
        bad += int(((r.values["txn_count_1h"][ok] < 0) | (r.values["amount_sum_24h"][ok] < 0)).sum())
        bad += int(sum(c not in ("US", "DE", "FR", "BR", "IN", "JP") for c in r.values["country"][ok]))
        if row is not None and row[0] < 0:
            bad += 1
    out.put((single, batch, bad, seen))


def _crashing_writer(dir, start, conn):
    store = DurableTable.open(dir, SCHEMA, capacity=1, ttl_us=HOUR_US)  # settings come from store.json
    rng = np.random.default_rng(start)
    k = start
    while k < start + CRASH_ROWS:  # bounded: every acknowledged row must still fit the table
        keys = np.arange(k, k + 100, dtype=np.int64)
        vals, ts = _batch(rng, keys, time.time_ns() // 1000)
        store.put_batch(keys, vals, ts, now=time.time_ns() // 1000)
        conn.send(k + 100)  # acknowledged: durable before put_batch returned
        k += 100
    time.sleep(3600)  # wait for the SIGKILL


def _pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] / 1000 if xs else float("nan")


def run_demo(rows: int = 200_000, readers: int = 2, keep: str | None = None, out=None) -> int:
    say = (lambda *a: print(*a, file=out, flush=True)) if out else (lambda *a: None)
    root = keep or tempfile.mkdtemp(prefix="fstore-demo-")
    os.makedirs(root, exist_ok=True)
    store_dir = os.path.join(root, "store")
    ctx = mp.get_context("spawn")
    procs = []
    failures = 0
    try:
        say(f"fstore demo — store core (durable online table) in {root}")
        store = DurableTable.open(store_dir, SCHEMA, capacity=rows + 100_000, ttl_us=24 * HOUR_US,
                                  table_path=os.path.join(root, "user_features.fst"), fsync="always")
        say(f"  table: {store.table.capacity:,} rows capacity, {store.table.nbytes / 2**20:.1f} MiB shared file, "
            f"TTL 24h, WAL fsync=always")
        rng = np.random.default_rng(7)
        now = time.time_ns() // 1000
        t0 = time.perf_counter()
        for s in range(0, rows, 5_000):
            keys = np.arange(s, min(rows, s + 5_000), dtype=np.int64)
            vals, ts = _batch(rng, keys, now)
            store.put_batch(keys, vals, ts, now=now)
        dt = time.perf_counter() - t0
        say(f"1. wrote {rows:,} rows durably in {dt:.2f}s ({rows / dt:,.0f} rows/s, batches of 5,000)")

        q = ctx.Queue()
        procs = [ctx.Process(target=_reader, args=(store.table.path, rows, 2.0, q)) for _ in range(readers)]
        for p in procs:
            p.start()
        time.sleep(0.5)
        t1 = time.perf_counter()
        updates = 0
        while time.perf_counter() - t1 < 1.0:  # keep writing while readers read
            keys = rng.integers(0, rows, 1_000)
            vals, ts = _batch(rng, keys, time.time_ns() // 1000)
            store.put_batch(keys, vals, ts, now=time.time_ns() // 1000)
            updates += 1_000
        results = [q.get(timeout=60) for _ in procs]
        for p in procs:
            p.join(10)
        single = [x for r in results for x in r[0]]
        batch = [x for r in results for x in r[1]]
        bad = sum(r[2] for r in results)
        failures += bad > 0
        say(f"2. {readers} reader processes mapped the same file while {updates:,} rows were updated:")
        say(f"   single get  p50 {_pct(single, .5):6.1f} us  p99 {_pct(single, .99):6.1f} us  ({len(single):,} reads)")
        say(f"   100-key get p50 {_pct(batch, .5):6.1f} us  p99 {_pct(batch, .99):6.1f} us;"
            f" torn or invalid rows seen: {bad}")
        sample = store.get(42, now=time.time_ns() // 1000)
        say(f"   user 42 -> {dict(zip(SCHEMA.column_names, sample))}")

        t2 = time.perf_counter()
        lsn = store.checkpoint()
        say(f"3. checkpoint at LSN {lsn} written in {time.perf_counter() - t2:.2f}s (readers never blocked)")
        store.close()

        parent, child = ctx.Pipe(duplex=False)
        w = ctx.Process(target=_crashing_writer, args=(store_dir, rows + 1_000_000, child))
        w.start()
        acked = rows + 1_000_000
        # kill it mid-stream: at a random point between 10% and 90% of its rows
        kill_at = acked + int(rng.integers(CRASH_ROWS // 10, CRASH_ROWS * 9 // 10))
        deadline = time.monotonic() + 60
        while acked < kill_at and time.monotonic() < deadline:
            if parent.poll(0.05):
                acked = parent.recv()
        os.kill(w.pid, signal.SIGKILL)
        w.join()
        while parent.poll():
            acked = parent.recv()
        t3 = time.perf_counter()
        store = DurableTable.open(store_dir, SCHEMA, table_path=os.path.join(root, "user_features.fst"))
        rec_s = time.perf_counter() - t3
        keys = np.arange(rows + 1_000_000, acked, dtype=np.int64)
        r = store.get_batch(keys, now=time.time_ns() // 1000)
        lost = int((r.status != PRESENT).sum())
        failures += lost > 0
        say(f"4. a writer child was killed with SIGKILL after {len(keys):,} acknowledged rows;")
        say(f"   recovery (checkpoint + {store.replayed} WAL records) took {rec_s:.2f}s;"
            f" acknowledged rows lost: {lost}; rows now: {len(store):,}")
        store.close()
        say("demo " + ("passed" if not failures else "FAILED") + "; see README.md for what comes next")
        return 0 if not failures else 1
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
        if keep is None:
            shutil.rmtree(root, ignore_errors=True)
