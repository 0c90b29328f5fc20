"""On-demand features (issue 18): what five on-demand features add to a
1 entity x 50 feature read, against the same read without them, in one run:

- in-process: `OnlineReader.get_online_json` (a worker's read: the bytes the
  API sends), the two request shapes interleaved;
- HTTP: `fstore serve` (2 workers), open loop at a fixed rate, the two
  request shapes in alternating rounds;
- Feast: its in-process `FeatureStore.get_online_features().to_dict()` with
  the same five features as an on-demand view (mode="python", Feast's fastest
  for small batches; pandas mode measured too), against its read without
  them. Feast runs in its own venv (benches/feast_peer.py).

The five features: amount / fv50.f0, amount - fv50.f1, fv50.f2 * 2 + amount,
CASE WHEN amount > fv50.f3 THEN 1 ELSE 0 END, greatest(fv50.f4, amount).
Set FSTORE_BENCH_NO_FEAST=1 to skip Feast.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benches import feast_peer
from benches._common import Row
from benches.bench_serving import FEATURES, HOST, N_ENTITIES, N_FEATURES, log, pct, start_fstore, stop
from benches.loadgen import run_open_loop

OD_SQL = """
CREATE REQUEST SOURCE req (amount DOUBLE);
CREATE ON DEMAND FEATURE VIEW od AS SELECT
    amount / fv50.f0 AS ratio,
    amount - fv50.f1 AS diff,
    fv50.f2 * 2 + amount AS lin,
    CASE WHEN amount > fv50.f3 THEN 1 ELSE 0 END AS above,
    greatest(fv50.f4, amount) AS top
FROM req, fv50;
"""
OD_FEATURES = [f"od:{f}" for f in ("ratio", "diff", "lin", "above", "top")]

FEAST_OD_PY = """
from feast import RequestSource
from feast.on_demand_feature_view import on_demand_feature_view

req = RequestSource(name="req", schema=[Field(name="amount", dtype=Float64)])
OD_SCHEMA = [Field(name="ratio", dtype=Float64), Field(name="diff", dtype=Float64), Field(name="lin", dtype=Float64),
             Field(name="above", dtype=Int64), Field(name="top", dtype=Float64)]

@on_demand_feature_view(sources=[fv50, req], schema=OD_SCHEMA, mode="python")
def od(inputs):
    a, f0, f1, f2, f3, f4 = (inputs[k] for k in ("amount", "f0", "f1", "f2", "f3", "f4"))
    return {"ratio": [x / y if y else None for x, y in zip(a, f0)], "diff": [x - y for x, y in zip(a, f1)],
             "lin": [y * 2 + x for x, y in zip(a, f2)], "above": [int(x > y) for x, y in zip(a, f3)],
             "top": [max(x, y) for x, y in zip(a, f4)]}

@on_demand_feature_view(sources=[fv50, req], schema=OD_SCHEMA, mode="pandas")
def od_pandas(inputs):
    import pandas as pd
    out = pd.DataFrame()
    out["ratio"] = inputs["amount"] / inputs["f0"]
    out["diff"] = inputs["amount"] - inputs["f1"]
    out["lin"] = inputs["f2"] * 2 + inputs["amount"]
    out["above"] = (inputs["amount"] > inputs["f3"]).astype("int64")
    out["top"] = inputs[["f4", "amount"]].max(axis=1)
    return out
"""

FEAST_INPROC = """
import json, sys, time
from feast import FeatureStore
store = FeatureStore(repo_path=sys.argv[1])
iters = int(sys.argv[2])
base = [f"fv50:f{i}" for i in range(50)]
shapes = {"plain": base, "python": base + [f"od:{f}" for f in ("ratio", "diff", "lin", "above", "top")],
          "pandas": base + [f"od_pandas:{f}" for f in ("ratio", "diff", "lin", "above", "top")]}
out = {k: [] for k in shapes}
for k, feats in shapes.items():
    for _ in range(5):
        store.get_online_features(features=feats, entity_rows=[{"user_id": 1, "amount": 50.0}]).to_dict()
for _ in range(iters):
    for k, feats in shapes.items():
        t = time.perf_counter_ns()
        store.get_online_features(features=feats, entity_rows=[{"user_id": 1, "amount": 50.0}]).to_dict()
        out[k].append(time.perf_counter_ns() - t)
print(json.dumps(out))
"""


def body(n_od: bool, user: int = 1) -> bytes:
    feats = FEATURES + (OD_FEATURES if n_od else [])
    ents = {"user_id": [user]} | ({"amount": [50.0]} if n_od else {})
    return json.dumps({"features": feats, "entities": ents}).encode()


def inprocess(root: Path, iters: int) -> dict[str, list[int]]:
    from fsapp.serve.reader import OnlineReader
    reader = OnlineReader(str(root / "data" / "engine"), str(root / "data" / "registry.db"))
    shapes = {"plain": (FEATURES, {"user_id": [1]}),
              "on-demand": (FEATURES + OD_FEATURES, {"user_id": [1], "amount": [50.0]})}
    out = {k: [] for k in shapes}
    try:
        for feats, ent in shapes.values():
            for _ in range(20):
                reader.get_online_json(feats, None, ent, now=time.time_ns() // 1000)
        for _ in range(iters):
            for k, (feats, ent) in shapes.items():
                t = time.perf_counter_ns()
                reader.get_online_json(feats, None, ent, now=time.time_ns() // 1000)
                out[k].append(time.perf_counter_ns() - t)
    finally:
        reader.close()
    return out


def feast_inprocess(work: Path, data: list[dict], iters: int) -> dict[str, list[int]]:
    root = work / "feast-repo"
    feast_peer.setup_repo(root, data, N_FEATURES, log=sys.stderr, extra_py=FEAST_OD_PY)
    r = subprocess.run([feast_peer._bin("python"), "-c", FEAST_INPROC, str(root), str(iters)],
                       capture_output=True, text=True, timeout=900)
    if r.returncode != 0:
        raise feast_peer.FeastUnavailable("Feast on-demand lookup failed: " + r.stderr[-400:])
    return json.loads(r.stdout.strip().splitlines()[-1])


def run(quick: bool = False) -> list[Row]:
    iters = 2000 if quick else 10000
    (rounds, round_s), rate = ((4, 3.0) if quick else (6, 5.0)), 200
    work = Path(tempfile.mkdtemp(prefix="fstore-bench-ondemand-"))
    now = time.time()
    data = [dict({"user_id": u, "ts": now - 60}, **{f"f{i}": u + i / 100 for i in range(N_FEATURES)})
            for u in range(N_ENTITIES)]
    rows: list[Row] = []
    proc = None
    try:
        proc, port, root = start_fstore(work, data, OD_SQL)
        ours = inprocess(root, iters)
        p = {k: (pct(v, .5) / 1e3, pct(v, .99) / 1e3) for k, v in ours.items()}
        log(f"in-process 1x50: plain p50/p99 {p['plain'][0]:.1f}/{p['plain'][1]:.1f} µs, +5 on-demand "
            f"{p['on-demand'][0]:.1f}/{p['on-demand'][1]:.1f} µs")
        rows.append(Row("ondemand", "in-process 1x50 + 5 on-demand features, p99", p["on-demand"][1],
                        "the same read without them", p["plain"][1], "µs", "lower", "added p99 <= 20%"))
        rows.append(Row("ondemand", "in-process 1x50 + 5 on-demand features, p50", p["on-demand"][0],
                        "the same read without them", p["plain"][0], "µs", "lower"))
        http = {"plain": [], "on-demand": []}
        for r in range(rounds):
            for k in (("plain", "on-demand") if r % 2 == 0 else ("on-demand", "plain")):
                res = run_open_loop(HOST, port, "/get-online-features", body(k == "on-demand"), rate, round_s)
                if res.errors or res.unsent:
                    raise RuntimeError(f"{k}: {res.errors} errors")
                http[k] += [x * 1e3 for x in res.latencies]
        h = {k: (pct(v, .5), pct(v, .99)) for k, v in http.items()}
        log(f"HTTP 1x50 @{rate}/s: plain p50/p99 {h['plain'][0]:.2f}/{h['plain'][1]:.2f} ms, +5 on-demand "
            f"{h['on-demand'][0]:.2f}/{h['on-demand'][1]:.2f} ms")
        rows.append(Row("ondemand", f"HTTP 1x50 + 5 on-demand @{rate}/s, p99", h["on-demand"][1],
                        "the same request without them", h["plain"][1], "ms", "lower", "added p99 <= 10%"))
        rows.append(Row("ondemand", f"HTTP 1x50 + 5 on-demand @{rate}/s, p50", h["on-demand"][0],
                        "the same request without them", h["plain"][0], "ms", "lower"))
        if os.environ.get("FSTORE_BENCH_NO_FEAST"):
            return rows
        try:
            fe = feast_inprocess(work, data, max(200, iters // 10))
        except (feast_peer.FeastUnavailable, OSError, subprocess.SubprocessError) as e:
            log(f"Feast skipped: {e}")
            return rows
        f = {k: (pct(v, .5) / 1e3, pct(v, .99) / 1e3) for k, v in fe.items()}
        added_ours = p["on-demand"][1] - p["plain"][1]
        for mode in ("python", "pandas"):
            log(f"Feast in-process 1x50: plain p50/p99 {f['plain'][0]:.0f}/{f['plain'][1]:.0f} µs, +5 on-demand "
                f"({mode}) {f[mode][0]:.0f}/{f[mode][1]:.0f} µs")
            rows.append(Row("ondemand", "in-process: p99 added by 5 on-demand features", added_ours,
                            f"Feast, on-demand view mode={mode}", f[mode][1] - f["plain"][1], "µs", "lower"))
        rows.append(Row("ondemand", "in-process 1x50 + 5 on-demand features, p99", p["on-demand"][1],
                        "Feast's get_online_features, the same", f["python"][1], "µs", "lower"))
        return rows
    finally:
        stop(proc)
        shutil.rmtree(work, ignore_errors=True)
