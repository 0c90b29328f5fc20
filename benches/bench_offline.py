"""Offline store benchmarks (issue 5).

1. Point-in-time join, plain view: N entity rows against M feature rows
   (100k keys; full: 1M x 10M) — `get_historical_features` vs pandas
   `merge_asof` (including the sort it needs, and Feast's tie-break by created
   timestamp done the pandas way: sort by (ts, created)). Feast rows come from
   `benches/feast_oracle.py`: the oracle on `feast init`'s driver_stats and
   Feast 0.67's `get_historical_features` (own venv) vs ours at growing entity
   sizes until Feast takes > ~120 s (FSTORE_BENCH_FEAST=0 skips them).
2. Windowed backfill: M events, Q query rows, sliding / continuous / session
   windows — ours vs replaying the same events through the online engine
   (`fscore.window.WindowView`, fed in time order, read as of each query time),
   which must give the same counts (checked).

Each measurement runs in its own subprocess and reports its own peak RSS
(`ru_maxrss`), so one side's memory does not hide the other's.
"""
from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from benches._common import Row

SIZES = {True: dict(feat=200_000, ent=50_000, keys=20_000, events=200_000, queries=10_000),
         False: dict(feat=10_000_000, ent=1_000_000, keys=100_000, events=10_000_000, queries=100_000)}
SPAN = 30 * 86_400_000_000  # 30 days of µs
WINDOWS = {"sliding": ("sliding", "1h", "5m"), "continuous": ("continuous", "1h", "5m"), "session": ("session", "30m")}


def make_data(d: str, s: dict, seed: int = 7) -> None:
    rng = np.random.default_rng(seed)
    n = s["feat"]
    pq.write_table(pa.table({"k": rng.integers(0, s["keys"], n), "ts": rng.integers(0, SPAN, n),
                             "created": rng.integers(0, 3, n), "v": rng.random(n)}), f"{d}/feat.parquet")
    m = s["ent"]
    pq.write_table(pa.table({"k": rng.integers(0, s["keys"], m), "event_timestamp": rng.integers(0, SPAN, m)}),
                   f"{d}/ent.parquet")
    e = s["events"]
    ts = np.sort(rng.integers(0, SPAN, e))
    pq.write_table(pa.table({"k": rng.integers(0, s["keys"], e), "ts": ts, "x": rng.random(e)}), f"{d}/ev.parquet")
    q = s["queries"]
    pq.write_table(pa.table({"k": rng.integers(0, s["keys"], q), "event_timestamp": rng.integers(0, SPAN, q)}),
                   f"{d}/q.parquet")


# ---------------------------------------------------------------- children


def child_ours_plain(d: str) -> dict:
    from fsapp.offline import OfflineStore, ViewDef
    store = OfflineStore(f"{d}/store_plain")
    store.register_source("feat", f"{d}/feat.parquet", timestamp="ts", created_timestamp="created")
    view = ViewDef.plain("f", "feat", ["k"], ["v"])
    t0 = time.perf_counter()
    out = store.get_historical_features(f"{d}/ent.parquet", [view]).to_arrow()
    return {"seconds": time.perf_counter() - t0, "rows": out.num_rows,
            "checksum": float(np.nansum(out.column("v").to_numpy(zero_copy_only=False)))}


def child_pandas_plain(d: str) -> dict:
    import pandas as pd
    feat = pd.read_parquet(f"{d}/feat.parquet")
    ent = pd.read_parquet(f"{d}/ent.parquet")
    t0 = time.perf_counter()
    ent = ent.reset_index()  # to restore the input order afterwards, as we do
    # merge_asof needs both sides sorted on the time key; ties at equal ts go
    # to the last row, so sort by (ts, created) to get Feast's tie-break.
    f = feat.sort_values(["ts", "created"], kind="stable")
    e = ent.sort_values("event_timestamp", kind="stable")
    out = pd.merge_asof(e, f[["k", "ts", "v"]], left_on="event_timestamp", right_on="ts", by="k",
                        direction="backward", allow_exact_matches=True)
    out = out.sort_values("index").drop(columns=["index", "ts"])
    return {"seconds": time.perf_counter() - t0, "rows": len(out), "checksum": float(np.nansum(out["v"].to_numpy()))}


def child_ours_window(d: str, kind: str) -> dict:
    from fscore.window_spec import continuous, session, sliding
    from fsapp.offline import OfflineStore, ViewDef
    w = WINDOWS[kind]
    spec = {"sliding": sliding, "continuous": continuous, "session": session}[w[0]](*w[1:])
    store = OfflineStore(f"{d}/store_{kind}")
    store.register_source("ev", f"{d}/ev.parquet", timestamp="ts")
    view = ViewDef.windowed("w", "ev", ["k"], spec, ["count(*)", "sum(x)", "max(x)", "last(x)"])
    t0 = time.perf_counter()
    out = store.get_historical_features(f"{d}/q.parquet", [view]).to_arrow()
    return {"seconds": time.perf_counter() - t0, "rows": out.num_rows,
            "counts": out.column("count_star").to_numpy().tolist()}


def child_engine_window(d: str, kind: str) -> dict:
    from fscore.window import WindowView
    from fscore.window_spec import continuous, session, sliding
    w = WINDOWS[kind]
    spec = {"sliding": sliding, "continuous": continuous, "session": session}[w[0]](*w[1:])
    ev = pq.read_table(f"{d}/ev.parquet")
    q = pq.read_table(f"{d}/q.parquet")
    t0 = time.perf_counter()
    k, ts, x = (ev.column(c).to_numpy() for c in ("k", "ts", "x"))
    qk, qt = q.column("k").to_numpy(), q.column("event_timestamp").to_numpy()
    order = np.argsort(qt, kind="stable")
    view = WindowView(spec, ["count(*)", "sum(x)", "max(x)", "last(x)"], int(max(k.max(), qk.max())) + 1)
    counts = np.zeros(len(qt), dtype=np.int64)
    fed = 0
    # Feed events up to each distinct query time, then read as of it.
    uniq, starts = np.unique(qt[order], return_index=True)
    ends = np.append(starts[1:], len(order))
    cut = np.searchsorted(ts, uniq, side="left")
    for t, a, b, c in zip(uniq.tolist(), starts.tolist(), ends.tolist(), cut.tolist()):
        if c > fed:
            view.update(k[fed:c], ts[fed:c], {"x": x[fed:c]})
            fed = c
        rows = order[a:b]
        vals, _ = view.value_as_of(qk[rows], t)
        counts[rows] = vals["count_star"]
    return {"seconds": time.perf_counter() - t0, "rows": len(qt), "counts": counts.tolist()}


def _child_main(argv) -> None:
    name, d, *rest = argv
    out = globals()[f"child_{name}"](d, *rest)
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(out))


def _run_child(name: str, d: str, *args) -> dict:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    p = subprocess.run([sys.executable, "-m", "benches.bench_offline", name, d, *args], cwd=root,
                       capture_output=True, text=True, check=False)
    if p.returncode:
        raise RuntimeError(f"bench child {name} failed:\n{p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------- runner


def _eventlog_rows(quick: bool, rounds: int = 3) -> list[Row]:
    """The event log's flush (every event pushed ends in one): its Parquet
    encodings (`parquet_encodings`: time columns delta-encoded, a
    dictionary for the others) against the same log writing with Arrow's
    default encodings (a dictionary for every column), same events written
    a file per `flush_rows` as the log does, rounds alternating: time per
    event, bytes per event on disk, and a DuckDB scan of the files."""
    import duckdb

    from fsapp.offline import eventlog

    n = 200_000 if quick else 1_000_000
    rng = np.random.default_rng(11)
    day = 1_764_000_000_000_000 // 86_400_000_000 * 86_400_000_000
    events = pa.table({"user_id": rng.zipf(1.3, n) % 1_000_000,
                       "merchant_id": pa.array([f"m{i:05d}" for i in rng.integers(0, 20_000, n)]),
                       "amount": np.round(rng.exponential(50.0, n), 2),
                       "ts": pa.array(np.sort(rng.integers(day, day + 43_200_000_000, n)), pa.timestamp("us", "UTC"))})
    ours_enc = eventlog.parquet_encodings
    arms = {"ours": ours_enc, "peer": lambda schema: {}}
    flush: dict[str, list] = {a: [] for a in arms}
    scan: dict[str, list] = {a: [] for a in arms}
    size = {}
    try:
        for _ in range(rounds):
            for arm, enc in arms.items():
                eventlog.parquet_encodings = enc
                with tempfile.TemporaryDirectory(prefix="fstore-bench-eventlog-") as d:
                    log = eventlog.EventLog(d)
                    step = log.flush_rows  # a file per flush_rows events, as the log writes them
                    log.flush_rows = n + 1  # flushed below, not in the background
                    took = 0.0
                    for lo in range(0, n, step):
                        log.append("s", events.slice(lo, step), timestamp="ts", created_ts=day + 43_200_000_000)
                        t = time.perf_counter()
                        log.flush()
                        took += time.perf_counter() - t
                    flush[arm].append(took)
                    size[arm] = sum(os.path.getsize(f) for f in log.files("s"))
                    con = duckdb.connect()
                    t = time.perf_counter()
                    con.execute(f"SELECT user_id, count(*), sum(amount), max(ts), max(_fs_seq) "
                                f"FROM read_parquet('{log.glob('s')}') GROUP BY ALL").fetchall()
                    scan[arm].append(time.perf_counter() - t)
                    con.close()
    finally:
        eventlog.parquet_encodings = ours_enc
    label = f"event log, {n:,} events (2 ids, a string, a double, a timestamp)"
    peer = "Arrow's default Parquet encodings"
    med = statistics.median
    return [Row(label, "flush to Parquet, per event", med(flush["ours"]) / n * 1e9, peer, med(flush["peer"]) / n * 1e9,
                "ns"),
            Row(label, "bytes per event on disk", size["ours"] / n, peer, size["peer"] / n, "B"),
            Row(label, "DuckDB scan (group by user)", med(scan["ours"]) * 1e3, peer, med(scan["peer"]) * 1e3, "ms")]


def run(quick: bool) -> list[Row]:
    s = SIZES[quick]
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="fstore-bench-offline-") as d:
        make_data(d, s)
        ours = _run_child("ours_plain", d)
        peer = _run_child("pandas_plain", d)
        if abs(ours["checksum"] - peer["checksum"]) > 1e-6 * max(1.0, abs(peer["checksum"])):
            raise AssertionError(f"PIT join disagrees with merge_asof: {ours['checksum']} vs {peer['checksum']}")
        label = f"pit join {s['ent']:,} x {s['feat']:,}"
        rows.append(Row(label, "seconds", ours["seconds"], "pandas merge_asof", peer["seconds"], "s",
                        target=">= 0.67x (within 1.5x of merge_asof)"))
        rows.append(Row(label, "peak RSS", ours["peak_rss_mb"], "pandas merge_asof", peer["peak_rss_mb"], "MB"))
        for kind in WINDOWS:
            ours = _run_child("ours_window", d, kind)
            peer = _run_child("engine_window", d, kind)
            if ours["counts"] != peer["counts"]:
                bad = sum(a != b for a, b in zip(ours["counts"], peer["counts"]))
                raise AssertionError(f"{kind} backfill disagrees with the engine on {bad} rows")
            label = f"backfill {kind} {s['events']:,} ev x {s['queries']:,} q"
            rows.append(Row(label, "seconds", ours["seconds"], "engine replay", peer["seconds"], "s"))
            rows.append(Row(label, "peak RSS", ours["peak_rss_mb"], "engine replay", peer["peak_rss_mb"], "MB"))
    rows += _eventlog_rows(quick)
    if os.environ.get("FSTORE_BENCH_FEAST", "1") != "0":
        from benches.feast_oracle import bench_rows
        rows.extend(bench_rows(quick))
    return rows


if __name__ == "__main__":
    _child_main(sys.argv[1:])
