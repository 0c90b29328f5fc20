"""Concurrent push throughput at fsync=always: N clients against one client,
same run (issue 13).

Each client is a thread pushing one-event batches (a new user each time: the
starter repo's two windowed views and its offline log do their full work)
into the embedded engine of a fresh `fstore init` repo for a few seconds.
Pushes waiting for each other are prepared as one batch by one thread
(GIL-bound work) and logged together, applied in LSN order under the
engine lock, and wait for durability outside it, so concurrent pushes share
fsyncs: the WAL's own counters give how many records each fsync made durable.

FSTORE_BENCH_DIR picks the directory (default: the system temp dir).
"""
from __future__ import annotations

import os
import shutil
import statistics
import tempfile
import threading
import time

from benches._common import Row

SECONDS = 4.0


def _repo(base: str):
    from fsapp.registry.repo import Repo
    from fsapp.registry.scaffold import init_repo

    root = os.path.join(base, "repo")
    init_repo(root)
    r = Repo(root)
    r.apply()
    return r


def pushes_per_s(base: str, clients: int, seconds: float) -> tuple[float, float, float, float]:
    """(pushes/s, p50 ms, p99 ms, records per fsync) for `clients` threads."""
    from fsapp.engine import Engine

    repo = _repo(os.path.join(base, f"c{clients}"))
    eng = Engine(str(repo.data_dir / "engine"), str(repo.registry_path), fsync="always", repo_root=str(repo.root))
    now = time.time()
    stop = threading.Event()
    lat: list[list[float]] = [[] for _ in range(clients)]
    start = threading.Barrier(clients + 1)

    def client(i):
        n = 0
        start.wait()
        while not stop.is_set():
            user = i * 10_000_000 + n
            row = {"user_id": user, "merchant_id": f"m{n % 50}", "amount": 10.0 + n % 7, "currency": "USD",
                   "country": "US", "is_online": True, "ts": now - 30}
            t0 = time.perf_counter()
            eng.push("transactions", [row])
            lat[i].append(time.perf_counter() - t0)
            n += 1

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    # a warm-up push per thread learns the cast's schema: start the clock after it
    start.wait()
    t0 = time.perf_counter()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    wal = eng.wal.stats()
    eng.close()
    all_lat = sorted(x for l in lat for x in l)
    total = len(all_lat)
    p99 = all_lat[min(total - 1, int(0.99 * total))] if total else float("nan")
    per_fsync = wal["synced_records"] / wal["fsyncs"] if wal["fsyncs"] else float("nan")
    return total / elapsed, statistics.median(all_lat) * 1e3, p99 * 1e3, per_fsync


def run(quick: bool = False) -> list[Row]:
    base = tempfile.mkdtemp(prefix="fstore-bench-push-", dir=os.environ.get("FSTORE_BENCH_DIR"))
    seconds = 2.0 if quick else SECONDS
    try:
        one = pushes_per_s(base, 1, seconds)
        rows = [Row("push", "1 client, fsync=always: pushes/s (p50, p99 ms; records/fsync)", one[0],
                    "1 client", one[0], "push/s", "higher", f"p50 {one[1]:.1f} ms, p99 {one[2]:.1f} ms, "
                                                               f"{one[3]:.1f} rec/fsync")]
        for clients in (4, 16):
            got = pushes_per_s(base, clients, seconds)
            rows.append(Row("push", f"{clients} clients, fsync=always: pushes/s", got[0], "1 client (same run)",
                            one[0], "push/s", "higher",
                            f"p50 {got[1]:.1f} ms, p99 {got[2]:.1f} ms, {got[3]:.1f} rec/fsync"))
        return rows
    finally:
        shutil.rmtree(base, ignore_errors=True)
