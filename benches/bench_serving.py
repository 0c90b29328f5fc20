"""Serving: `fstore serve` (2 gunicorn workers, --fsync always) against the
floor (a Falcon app under the same gunicorn settings returning a fixed JSON
body of the same size, no lookup) and Feast's Python feature server (`feast
serve`, SQLite online store, --workers 2 --max-requests 0), all measured in
this run with the open-loop load generator in benches/loadgen.py.

Data: one entity `user_id`, 1,000 entities, a feature view `fv50` of 50
DOUBLE features (plain features over a stream; the Feast repo gets the same
rows as a Parquet FileSource, applied and materialized). Requests are Feast's
shape, `POST /get-online-features` with 1 entity x 50 features and 100
entities x 50 features.

Also: in-process lookup (no HTTP; `OnlineReader.get_online_json`, the bytes the
API sends, and `get_online_features`, the same as Python objects, against
Feast's in-process `FeatureStore.get_online_features().to_dict()`), and
freshness (push through one worker -> visible in a read served by another).

The machine has 2 cores: the load generator (Python threads), the 2 server
workers and our engine process share them, so every HTTP figure includes
CPU contention with the load generator. Set FSTORE_BENCH_NO_FEAST=1 to skip
the Feast peer.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benches._common import Row
from benches import feast_peer
from benches.loadgen import Result, request_once, run_open_loop, wait_quiet

HOST = "127.0.0.1"
N_FEATURES = 50
N_ENTITIES = 1000
FEATURES = [f"fv50:f{i}" for i in range(N_FEATURES)]
RAMP = [5, 10, 20, 30, 50, 70, 100, 150, 200, 300, 400, 500, 700, 1000, 1300, 1600, 2000, 2500, 3000]
RAMP_QUICK = [10, 50, 200, 500, 1000, 2000]
P99_LIMIT_MS = 10.0
BENCH_DIR = Path(__file__).resolve().parent


def log(msg: str) -> None:
    print(f"# serving: {msg}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def defs_sql() -> str:
    cols = ", ".join(f"f{i} DOUBLE" for i in range(N_FEATURES))
    feats = ", ".join(f"f{i}" for i in range(N_FEATURES))
    return (f"CREATE ENTITY user (user_id BIGINT);\n"
            f"CREATE STREAM s (user_id BIGINT, {cols}, ts TIMESTAMP) WITH (timestamp = 'ts', allowed_lateness = '1h');\n"
            f"CREATE FEATURE VIEW fv50 AS SELECT user_id, {feats} FROM s;\n")


def wait_http(port: int, path: str, proc: subprocess.Popen, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with code {proc.returncode} while starting")
        try:
            status, _, _ = request_once(HOST, port, "GET", path, timeout=5)
            if status < 500:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{what} did not answer {path} within {timeout:.0f}s")


def stop(proc: subprocess.Popen | None, group: bool = False) -> None:
    if proc is None or proc.poll() is not None:
        return
    try:
        if group:
            os.killpg(proc.pid, signal.SIGTERM)
        else:
            proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    except (subprocess.TimeoutExpired, ProcessLookupError):
        try:
            os.killpg(proc.pid, signal.SIGKILL) if group else proc.kill()
            proc.wait(10)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass


def post_json(port: int, path: str, body) -> tuple[int, dict, bytes]:
    return request_once(HOST, port, "POST", path, json.dumps(body).encode(), timeout=60)


def read_body(n: int, features=FEATURES, first: int = 0) -> bytes:
    return json.dumps({"features": list(features), "entities": {"user_id": list(range(first, first + n))}}).encode()


# ---------------------------------------------------------------- targets


class Target:
    def __init__(self, name: str, port: int, paths: dict[int, str]):
        self.name, self.port, self.paths = name, port, paths

    def path(self, n: int) -> str:
        return self.paths[n]


def start_fstore(work: Path, rows: list[dict], extra_defs: str = "") -> tuple[subprocess.Popen, int, Path]:
    from fsapp.registry.repo import Repo
    root = work / "fstore-repo"
    root.mkdir()
    (root / "fstore.yaml").write_text("project: servebench\nregistry: data/registry.db\ndata_dir: data\n")
    (root / "defs.sql").write_text(defs_sql() + extra_defs)
    Repo(root).apply()
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "fsapp.cli", "serve", "--repo", str(root), "--port", str(port),
                             "--workers", "2", "--fsync", "always", "--grpc-port", "0"],
                            stdout=open(work / "fstore-serve.log", "w"), stderr=subprocess.STDOUT)
    wait_http(port, "/health", proc, 120, "fstore serve")
    for i in range(0, len(rows), 250):
        status, _, body = post_json(port, "/api/v1/push", {"stream": "s", "rows": rows[i:i + 250]})
        if status != 200:
            raise RuntimeError(f"push failed: {status} {body[:300]!r}")
    return proc, port, root


def start_floor(work: Path, bodies: dict[str, bytes]) -> tuple[subprocess.Popen, int]:
    folder = work / "floor"
    folder.mkdir()
    for name, b in bodies.items():
        (folder / f"{name}.json").write_bytes(b)
    port = free_port()
    env = dict(os.environ, FSTORE_FLOOR_DIR=str(folder))
    # the same gunicorn settings as fsapp.serve.supervisor (sync workers, no recycling)
    proc = subprocess.Popen([sys.executable, "-m", "gunicorn", "--workers", "2", "--bind", f"{HOST}:{port}",
                             "--max-requests", "0", "--graceful-timeout", "10", "--log-level", "warning",
                             "--chdir", str(BENCH_DIR.parent), "benches.floor_app:app"],
                            env=env, stdout=open(work / "floor.log", "w"), stderr=subprocess.STDOUT)
    wait_http(port, "/floor/health", proc, 60, "floor gunicorn")  # 404 counts as up
    return proc, port


def start_feast(work: Path, rows: list[dict]) -> tuple[subprocess.Popen, int, Path]:
    root = work / "feast-repo"
    t = time.perf_counter()
    feast_peer.setup_repo(root, rows, N_FEATURES, log=sys.stderr)
    log(f"feast repo applied + materialized in {time.perf_counter() - t:.0f}s")
    port = free_port()
    proc = feast_peer.start_server(root, port, workers=2, log_path=str(work / "feast-serve.log"))
    try:
        wait_http(port, "/health", proc, 180, "feast serve")
    except RuntimeError as e:
        stop(proc, group=True)
        raise feast_peer.FeastUnavailable(f"{e}; log: {(work / 'feast-serve.log').read_text()[-300:]}")
    return proc, port, root


# ---------------------------------------------------------------- measurements


def measure(target: Target, n: int, rate: float, duration: float):
    body = read_body(n)
    res = run_open_loop(HOST, target.port, target.path(n), body, rate, duration)
    log(f"{target.name:6s} {n:>3}x50 {res.summary()}")
    if res.errors or res.unsent or res.p99 > 200:
        wait_quiet(HOST, target.port, target.path(n), body)
    return res


LOOSE_P99_MS = 100.0


def sustained(res, limit_ms: float = P99_LIMIT_MS) -> bool:
    return (res.errors == 0 and res.unsent == 0 and res.p99 < limit_ms
            and res.achieved >= 0.95 * res.rate)


def ramp(target: Target, n: int, steps: list[int], step_s: float) -> tuple[float, float]:
    """Rates in increasing order; a failed step is retried once (the machine
    is shared and noisy). Returns (highest rate with p99 < 10 ms, highest
    rate served at all: >= 95% of the offered rate, no errors, p99 < 100 ms)."""
    strict = loose = 0.0
    strict_done = False
    for rate in steps:
        res = measure(target, n, rate, max(step_s, 20.0 / rate))
        if not sustained(res, LOOSE_P99_MS) or (not strict_done and not sustained(res)):
            again = measure(target, n, rate, max(step_s, 20.0 / rate))
            if again.p99 < res.p99:
                res = again
        if not strict_done:
            if sustained(res):
                strict = rate
            else:
                strict_done = True
        if not sustained(res, LOOSE_P99_MS):
            break
        loose = rate
    log(f"{target.name} {n}x50: highest rate with p99 < {P99_LIMIT_MS:.0f} ms = {strict:.0f}/s; "
        f"served (p99 < {LOOSE_P99_MS:.0f} ms) up to {loose:.0f}/s")
    return strict, loose


def pct(xs: list[float], q: float) -> float:
    if not xs:
        return math.nan
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, math.ceil(q * len(s)) - 1))]


def inprocess_ours(root: Path, iters: int) -> dict[tuple[str, int], list[int]]:
    """ns per call of a worker's read: the JSON bytes the API sends, and the
    same answer as Python objects (what Feast's to_dict() gives)."""
    from fsapp.serve.reader import OnlineReader
    reader = OnlineReader(str(root / "data" / "engine"), str(root / "data" / "registry.db"))
    out = {}
    try:
        for what, call in (("json", reader.get_online_json), ("dict", reader.get_online_features)):
            for n, k in ((1, iters), (100, max(20, iters // 10))):
                ent = {"user_id": list(range(n))}
                for _ in range(5):
                    call(FEATURES, None, ent, now=time.time_ns() // 1000)
                ts = []
                for _ in range(k):
                    t = time.perf_counter_ns()
                    call(FEATURES, None, ent, now=time.time_ns() // 1000)
                    ts.append(time.perf_counter_ns() - t)
                out[(what, n)] = ts
    finally:
        reader.close()
    return out


def freshness(port: int, rounds: int) -> tuple[list[float], list[float], int, int]:
    """Push one row through the API (answered by worker W), then read until
    another worker serves the new value. Reads go out two at a time: with one
    at a time, the worker that just answered tends to win every accept race
    and the figure measures gunicorn's scheduling, not visibility. Returns
    push-ack latencies, ack -> visible-in-another-worker times (ms), stale
    reads by another worker after the ack, and rounds that never reached
    another worker."""
    from concurrent.futures import ThreadPoolExecutor

    ack_ms, vis_ms, stale, missed = [], [], 0, 0
    entity = N_ENTITIES - 1
    read = read_body(1, ["fv50:f0"], first=entity)
    with ThreadPoolExecutor(2) as pool:
        for k in range(rounds):
            marker = 1e6 + k
            row = dict({"user_id": entity, "ts": time.time()}, **{f"f{i}": marker for i in range(N_FEATURES)})
            t0 = time.perf_counter()
            status, headers, body = post_json(port, "/api/v1/push", {"stream": "s", "rows": [row]})
            t_ack = time.perf_counter()
            if status != 200:
                raise RuntimeError(f"push failed: {status} {body[:200]!r}")
            ack_ms.append((t_ack - t0) * 1e3)
            pusher = headers.get("x-fstore-worker")
            deadline, seen = t_ack + 5, False
            while time.perf_counter() < deadline and not seen:
                answers = list(pool.map(lambda _: request_once(HOST, port, "POST", "/get-online-features", read),
                                        range(2)))
                for _, h, b in answers:
                    if h.get("x-fstore-worker") == pusher:
                        continue
                    if json.loads(b)["results"][1]["values"][0] == marker:
                        if not seen:
                            vis_ms.append((time.perf_counter() - t_ack) * 1e3)
                        seen = True
                    else:
                        stale += 1
            if not seen:
                missed += 1
    return ack_ms, vis_ms, stale, missed


# ---------------------------------------------------------------- the bench


def run(quick: bool) -> list[Row]:
    fixed_rates = [200] if quick else [200, 1000]
    fixed_rounds, fixed_s = (3, 1.0) if quick else (5, 2.0)
    steps, step_s = (RAMP_QUICK, 1.0) if quick else (RAMP, 2.0)
    work = Path(tempfile.mkdtemp(prefix="fstore-bench-serving-"))
    log(f"work dir {work}; {os.cpu_count()} CPUs shared by the load generator and the servers; "
        f"loadavg {os.getloadavg()[0]:.2f}")
    now = time.time()
    data = [dict({"user_id": u, "ts": now - 60}, **{f"f{i}": u + i / 100 for i in range(N_FEATURES)})
            for u in range(N_ENTITIES)]
    procs: list[tuple[subprocess.Popen, bool]] = []
    rows: list[Row] = []
    try:
        t = time.perf_counter()
        fs_proc, fs_port, fs_root = start_fstore(work, data)
        procs.append((fs_proc, False))
        log(f"fstore serve up and {N_ENTITIES} rows pushed in {time.perf_counter() - t:.1f}s")
        ours = Target("fstore", fs_port, {1: "/get-online-features", 100: "/get-online-features"})
        bodies = {}
        for n in (1, 100):
            status, headers, b = request_once(HOST, fs_port, "POST", "/get-online-features", read_body(n))
            assert status == 200 and json.loads(b)["results"][1]["statuses"][0] == "PRESENT", b[:300]
            bodies[f"e{n}"] = b
        log(f"response sizes: 1x50 {len(bodies['e1'])} B, 100x50 {len(bodies['e100'])} B; "
            f"connection: {headers.get('connection', 'keep-alive')}")
        fl_proc, fl_port = start_floor(work, bodies)
        procs.append((fl_proc, False))
        floor = Target("floor", fl_port, {1: "/floor/e1", 100: "/floor/e100"})

        feast, feast_why, feast_root = None, "", None
        if os.environ.get("FSTORE_BENCH_NO_FEAST"):
            feast_why = "FSTORE_BENCH_NO_FEAST set"
        else:
            try:
                fe_proc, fe_port, feast_root = start_feast(work, data)
                procs.append((fe_proc, True))
                feast = Target("feast", fe_port, {1: "/get-online-features", 100: "/get-online-features"})
                status, _, b = request_once(HOST, fe_port, "POST", "/get-online-features", read_body(100))
                assert status == 200, b[:300]
                log(f"feast serve up; its 100x50 response is {len(b)} B")
            except (feast_peer.FeastUnavailable, AssertionError, RuntimeError, OSError) as e:
                feast_why = str(e)[:200]
                log(f"Feast skipped: {feast_why}")
        feast_label = "Feast serve" if feast else f"Feast (skipped: {feast_why})"
        targets = [t for t in (ours, floor, feast) if t is not None]

        # warm every target (first requests import/compile paths, open tables)
        for tg in targets:
            for n in (1, 100):
                for _ in range(5):
                    request_once(HOST, tg.port, "POST", tg.path(n), read_body(n))

        fixed: dict = {}
        for n in (1, 100):
            for rate in fixed_rates:
                # interleaved rounds, pooled: every target sees the same spells of
                # machine noise (the machine is shared), and p99 comes from
                # rounds x rate x seconds samples, not from the 8th-worst of 800
                parts: dict = {tg.name: [] for tg in targets}
                for _ in range(fixed_rounds):
                    for tg in targets:
                        if parts[tg.name] and not sustained(parts[tg.name][0], LOOSE_P99_MS):
                            continue  # saturated at this rate: more rounds would only time its backlog
                        parts[tg.name].append(measure(tg, n, rate, fixed_s))
                for tg in targets:
                    fixed[(tg.name, n, rate)] = Result.pooled(parts[tg.name])
                    log(f"{tg.name:6s} {n:>3}x50 pooled over {len(parts[tg.name])} rounds: "
                        f"{fixed[(tg.name, n, rate)].summary()}")
        best: dict = {}
        for n in (1, 100):
            for tg in targets:
                best[(tg.name, n)] = ramp(tg, n, steps, step_s)

        def served(res) -> str:
            return "" if res.achieved >= 0.95 * res.rate and not res.unsent else f", served {res.achieved:.0f}/s"

        shape = {1: "1x50", 100: "100x50"}
        for n in (1, 100):
            for rate in fixed_rates:
                o, f = fixed[("fstore", n, rate)], fixed[("floor", n, rate)]
                fe = fixed.get(("feast", n, rate))
                for q, name in ((0.5, "p50"), (0.99, "p99"), (0.999, "p99.9")):
                    rows.append(Row("serving", f"HTTP {shape[n]} {name} @{rate}/s{served(o)}", o.pct(q),
                                    f"floor (Falcon, fixed body){served(f)}", f.pct(q), "ms",
                                    target="within 1.3x of floor (ratio >= 0.77)" if name == "p99" else ""))
                for q, name in ((0.5, "p50"), (0.99, "p99")):
                    rows.append(Row("serving", f"HTTP {shape[n]} {name} @{rate}/s{served(o)}", o.pct(q),
                                    feast_label + (served(fe) if fe else ""), fe.pct(q) if fe else math.nan, "ms",
                                    target=">= 10x lower" if name == "p99" else ""))
        for n in (1, 100):
            for peer, label in (("floor", "floor (Falcon, fixed body)"), ("feast", feast_label)):
                for i, what in ((0, "max rate with p99 < 10 ms"), (1, "max rate served (p99 < 100 ms)")):
                    rows.append(Row("serving", f"HTTP {shape[n]} {what}", best[("fstore", n)][i], label,
                                    best[(peer, n)][i] if (peer, n) in best else math.nan, "req/s", better="higher",
                                    target=">= 10x Feast" if peer == "feast" and i == 0 else ""))
        for rate in fixed_rates:
            rows.append(Row("serving", f"HTTP 100x50 p99 vs 1x50 p99 @{rate}/s", fixed[("fstore", 100, rate)].p99,
                            "ours 1x50", fixed[("fstore", 1, rate)].p99, "ms", target="<= 2x (ratio >= 0.5)"))

        # in-process lookup
        iters = 300 if quick else 2000
        mine = inprocess_ours(fs_root, iters)
        theirs, why = {}, feast_why
        if feast_root is not None:
            try:
                theirs = feast_peer.inprocess_lookup_ns(feast_root, N_FEATURES, iters // 4)
            except feast_peer.FeastUnavailable as e:
                why = str(e)[:150]
        label = "Feast FeatureStore.get_online_features().to_dict()" if theirs else f"Feast (skipped: {why})"
        for what, how in (("json", "JSON bytes as served"), ("dict", "Python objects")):
            for n in (1, 100):
                for q, name in ((0.5, "p50"), (0.99, "p99")):
                    rows.append(Row("serving", f"in-process lookup {shape[n]} {name} (OnlineReader, {how})",
                                    pct(mine[(what, n)], q) / 1e3, label,
                                    pct(theirs[n], q) / 1e3 if theirs else math.nan, "us"))

        # freshness
        ack, vis, stale, missed = freshness(fs_port, 30 if quick else 200)
        log(f"freshness: {len(vis)} rounds seen by another worker, {stale} stale reads there, {missed} missed")
        for xs, what in ((vis, f"push ack -> read by another worker shows it ({stale} stale reads)"),
                         (ack, "push (1 row) ack latency, fsync=always")):
            for q, name in ((0.5, "p50"), (0.99, "p99")):
                rows.append(Row("serving", f"{what} {name}", pct(xs, q), "-", math.nan, "ms"))
        log(f"loadavg at the end {os.getloadavg()[0]:.2f}")
        return rows
    finally:
        for p, group in reversed(procs):
            stop(p, group)
        if not os.environ.get("FSTORE_BENCH_KEEP"):
            shutil.rmtree(work, ignore_errors=True)
