"""Soak (issue 15): `fstore serve` on the starter repo as `fstore init` writes
it (2 workers, fsync always), one client pushing 5-row batches every 10 ms
(users drawn from 1..50,000, so new users arrive for the first minutes and
then the set stops growing), two clients reading the fraud_v1 service for 10
keys every 10 ms. Reported per minute: push and read p50/p99, pushes/s and
the server processes' RSS; the rows compare the last minute with the first
(work that grows with time, besides the key count, shows as a ratio under 1).

Before issue 15's fixes the same load went from a 14.7 ms push p50 to 54 ms
within four minutes and ~98 ms after 17, pushes/s from ~40 to ~8.

    python -m benches.run --only soak     (--quick: 3 minutes, else 12)
"""
from __future__ import annotations

import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

from benches._common import Row
from benches.bench_serving import HOST, free_port, pct, stop, wait_http
from benches.loadgen import request_once

USERS = 50_000


def _server_rss(pid: int) -> int:
    """Resident bytes of the server's process group (supervisor, engine,
    gunicorn and its workers)."""
    total = 0
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            if os.getpgid(int(name)) != pid:
                continue
            with open(f"/proc/{name}/statm") as f:
                total += int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ProcessLookupError):
            pass
    return total


def soak(minutes: float) -> list[dict]:
    work = tempfile.mkdtemp(prefix="fstore-bench-soak-", dir=os.environ.get("FSTORE_BENCH_DIR"))
    root = os.path.join(work, "repo")
    cli = [sys.executable, "-m", "fsapp.cli"]
    subprocess.run([*cli, "init", root], check=True, stdout=subprocess.DEVNULL)
    subprocess.run([*cli, "apply", "--repo", root], check=True, stdout=subprocess.DEVNULL)
    port = free_port()
    with open(os.path.join(work, "serve.log"), "w") as log:
        proc = subprocess.Popen([*cli, "serve", "--repo", root, "--port", str(port), "--grpc-port", "0"],
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_http(port, "/health", proc, 120, "fstore serve")
        end = time.monotonic() + minutes * 60
        pushes, reads, errors = [], [], []

        def post(path: str, body: dict, into: list) -> None:
            t0 = time.monotonic()
            status, _, text = request_once(HOST, port, "POST", path, json.dumps(body).encode(), timeout=60)
            if status != 200:
                errors.append(f"{path}: {status} {text[:200]!r}")
            into.append((t0, time.monotonic() - t0))

        def pusher() -> None:
            rng, due = random.Random(1), time.monotonic()
            while time.monotonic() < end:
                now = time.time()
                rows = [{"user_id": rng.randint(1, USERS), "merchant_id": f"m{rng.randint(0, 2000)}",
                         "amount": round(rng.gammavariate(2, 30), 2), "currency": "USD", "country": "US",
                         "is_online": rng.random() < 0.3, "ts": now - rng.random() * 5} for _ in range(5)]
                post("/api/v1/push", {"stream": "transactions", "rows": rows}, pushes)
                due += 0.01
                time.sleep(max(0.0, due - time.monotonic()))

        def reader(seed: int) -> None:
            rng = random.Random(seed)
            while time.monotonic() < end:
                post("/api/v1/features/online", {"feature_service": "fraud_v1", "entities": {
                    "user_id": [rng.randint(1, USERS) for _ in range(10)],
                    "merchant_id": [f"m{rng.randint(0, 2000)}" for _ in range(10)]}}, reads)
                time.sleep(0.01)

        threads = [threading.Thread(target=pusher)] + [threading.Thread(target=reader, args=(s,)) for s in (2, 3)]
        t0 = time.monotonic()
        for t in threads:
            t.start()
        minutes_out = []
        for m in range(1, int(minutes) + 1):
            time.sleep(max(0.0, t0 + 60 * m - time.monotonic()))
            lo, hi = t0 + 60 * (m - 1), t0 + 60 * m
            p = [x * 1000 for s, x in list(pushes) if lo <= s < hi]
            r = [x * 1000 for s, x in list(reads) if lo <= s < hi]
            out = {"push_p50": pct(p, 0.5), "push_p99": pct(p, 0.99), "pushes_s": len(p) / 60,
                   "read_p50": pct(r, 0.5), "read_p99": pct(r, 0.99), "rss": _server_rss(proc.pid)}
            minutes_out.append(out)
            print(f"# soak: minute {m}: push p50 {out['push_p50']:.1f} / p99 {out['push_p99']:.1f} ms, "
                  f"{out['pushes_s']:.0f}/s; read p50 {out['read_p50']:.1f} / p99 {out['read_p99']:.1f} ms; "
                  f"server RSS {out['rss'] / 1e9:.2f} GB", file=sys.stderr, flush=True)
        for t in threads:
            t.join()
        if errors:
            raise RuntimeError(f"{len(errors)} requests failed, the first: {errors[0]}")
        return minutes_out
    finally:
        stop(proc, group=True)
        shutil.rmtree(work, ignore_errors=True)


def run(quick: bool = False) -> list[Row]:
    per_min = soak(3 if quick else 12)
    first, last = per_min[0], per_min[-1]
    n = len(per_min)
    return [
        Row("soak", f"5-row push p50, minute {n} of a soak (50k users, 100 pushes/s, 2 readers)", last["push_p50"],
            "minute 1", first["push_p50"], "ms", "lower", "flat (issue 15: 14.7 -> 54 ms in 4 min)"),
        Row("soak", f"5-row push p99, minute {n}", last["push_p99"], "minute 1", first["push_p99"], "ms", "lower"),
        Row("soak", f"10-key read p50, minute {n}", last["read_p50"], "minute 1", first["read_p50"], "ms", "lower"),
        Row("soak", f"pushes/s, minute {n}", last["pushes_s"], "offered", 100.0, "/s", "higher"),
        Row("soak", f"server RSS, minute {n}", last["rss"] / 1e9, "minute 1", first["rss"] / 1e9, "GB", "lower",
            f"median push p50 over the minutes {statistics.median(m['push_p50'] for m in per_min):.1f} ms"),
    ]
