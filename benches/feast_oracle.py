"""Feast itself as the oracle and the peer of our point-in-time join (issue 5).

Feast runs in its own venv (`benches.feast_peer.ensure_venv`, default
/tmp/feast-venv; never in our environment) through this same file executed
by the venv's python: `feast-side` mode below imports only the stdlib, pandas
and feast. Data crosses over as Parquet files.

1. Oracle: `feast init` (Feast's own example repo), `feast apply`, then an
   entity_df over its driver_stats data (every driver id plus one unknown
   id x every event timestamp, +-1 s around them, the TTL boundary exactly and
   1 s beyond it, before the first row, the gap after the 2021 row, random
   times), Feast's `get_historical_features` (its default `file` offline
   store, i.e. the Dask one) against ours on the same Parquet file with the
   same TTL and created column; row by row, in input order; floats exact
   (within 1e-9), nulls equal. Exit status 1 on any difference.
2. Bench: a driver_stats-like Parquet (driver_id, event_timestamp, created,
   conv_rate, acc_rate, avg_daily_trips; 100k keys), entity_df of N rows;
   Feast's `get_historical_features(...).to_df()` vs ours, each in its own
   process (seconds of the call, peak RSS), sizes growing until Feast takes
   more than FEAST_TIMEOUT_S or fails. `benches/bench_offline.py` adds these
   rows to its table.

    python -m benches.feast_oracle            # oracle only
    python -m benches.feast_oracle --bench    # oracle + the Feast bench (full sizes)
    python -m benches.feast_oracle --bench --quick
"""
from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time

FEATURES = ["conv_rate", "acc_rate", "avg_daily_trips"]
VIEW = "driver_hourly_stats"
FEAST_TIMEOUT_S = 150          # "Feast takes > ~120 s": the size after that is not tried
FEAST_MEM_LIMIT = 12 << 30     # address-space cap for the Feast child (RLIMIT_AS)
BENCH_SIZES = {True: dict(feat=200_000, keys=20_000, ents=(10_000, 50_000)),
               False: dict(feat=1_000_000, keys=100_000, ents=(10_000, 100_000, 1_000_000))}
SPAN_S = 30 * 86_400
TTL_S = 86_400

# ====================================================================== Feast side
# (runs under the Feast venv's python: stdlib + pandas + feast only)

BENCH_YAML = """project: fstore_oracle
registry: {root}/registry.db
provider: local
online_store:
  type: sqlite
  path: {root}/online.db
offline_store:
  type: file
entity_key_serialization_version: 3
"""


def _feast_store(repo: str, feat_path: str | None):
    from datetime import timedelta
    from feast import Entity, FeatureStore, FeatureView, Field, FileSource
    from feast.types import Float32, Int64
    if feat_path is None:                       # the `feast init` repo, applied by the CLI
        return FeatureStore(repo_path=repo)
    os.makedirs(repo, exist_ok=True)
    with open(os.path.join(repo, "feature_store.yaml"), "w") as f:
        f.write(BENCH_YAML.format(root=repo))
    store = FeatureStore(repo_path=repo)
    driver = Entity(name="driver", join_keys=["driver_id"])
    src = FileSource(name="driver_stats_source", path=feat_path, timestamp_field="event_timestamp",
                     created_timestamp_column="created")
    fv = FeatureView(name=VIEW, entities=[driver], ttl=timedelta(seconds=TTL_S), source=src, online=False,
                     schema=[Field(name="conv_rate", dtype=Float32), Field(name="acc_rate", dtype=Float32),
                             Field(name="avg_daily_trips", dtype=Int64)])
    store.apply([driver, fv])
    return store


def feast_side(repo: str, ent_path: str, out_path: str, feat_path: str | None) -> dict:
    import pandas as pd
    store = _feast_store(repo, feat_path)
    ttl = store.get_feature_view(VIEW).ttl
    ent = pd.read_parquet(ent_path)
    t0 = time.perf_counter()
    df = store.get_historical_features(entity_df=ent, features=[f"{VIEW}:{f}" for f in FEATURES]).to_df()
    seconds = time.perf_counter() - t0
    out = {"seconds": seconds, "rows": len(df), "ttl_s": ttl.total_seconds() if ttl else 0,
           "checksum": float(df["conv_rate"].astype("float64").sum()), "nulls": int(df["conv_rate"].isna().sum()),
           "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if out_path != "-":
        cols = [c for c in ["row_id", "driver_id", "event_timestamp", *FEATURES] if c in df.columns]
        df = df[cols].copy()
        for c in FEATURES:
            df[c] = df[c].astype("float64")
        df.to_parquet(out_path, index=False)
    return out


# ====================================================================== our side


def _py():
    from benches.feast_peer import ensure_venv
    return ensure_venv()


def _feast_bin(name: str) -> str:
    from benches.feast_peer import _bin
    return _bin(name)


def _limit_mem():
    resource.setrlimit(resource.RLIMIT_AS, (FEAST_MEM_LIMIT, FEAST_MEM_LIMIT))


def run_feast(repo: str, ent_path: str, out_path: str = "-", feat_path: str | None = None,
              timeout: float | None = None) -> dict:
    """Feast's side in the venv; {"error": ...} instead of raising on a
    timeout / failure (a bench row then says so)."""
    args = [_py(), os.path.abspath(__file__), "feast-side", repo, ent_path, out_path] + ([feat_path] if feat_path else [])
    try:
        p = subprocess.run(args, capture_output=True, text=True, timeout=timeout, preexec_fn=_limit_mem,
                           cwd=repo if feat_path is None else None)
    except subprocess.TimeoutExpired:
        return {"error": f"timeout after {timeout:.0f} s"}
    if p.returncode != 0:
        tail = p.stderr.strip().splitlines()[-1:] or [f"exit {p.returncode}"]
        return {"error": f"failed ({tail[0][:200]})", "stderr": p.stderr[-3000:]}
    return json.loads(p.stdout.strip().splitlines()[-1])


def ours(feat_path: str, ent_path: str, ttl_s: float, root: str) -> tuple[object, float]:
    from fsapp.offline import OfflineStore, ViewDef
    store = OfflineStore(root)
    store.register_source("driver_stats", feat_path, timestamp="event_timestamp", created_timestamp="created")
    store.add_view(ViewDef.plain(VIEW, "driver_stats", ["driver_id"], FEATURES, ttl=int(ttl_s * 1_000_000)))
    t0 = time.perf_counter()
    df = store.get_historical_features(ent_path, [f"{VIEW}:{f}" for f in FEATURES]).to_df()
    return df, time.perf_counter() - t0


# ---------------------------------------------------------------- oracle


def oracle_entities(data_path: str, out_path: str, ttl_s: float, seed: int = 5) -> int:
    """driver ids (+ one unknown) x interesting times; unique (id, time)
    pairs (Feast collapses duplicate entity rows, see docs/offline.md);
    shuffled, with a row_id to restore the input order of Feast's output."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    t = pq.read_table(data_path, columns=["driver_id", "event_timestamp"])
    ids = sorted(set(t.column("driver_id").to_pylist()))
    ts = t.column("event_timestamp").cast(pa.timestamp("us", tz="UTC")).cast(pa.int64()).to_numpy()
    uniq = np.unique(ts)
    s, ttl = 1_000_000, int(ttl_s * 1_000_000)
    rng = np.random.default_rng(seed)
    cand = np.concatenate([
        uniq, uniq - s, uniq + s, uniq + 1800 * s,           # equal, just before, just after, mid-hour
        uniq + ttl, uniq + ttl + s, uniq + ttl - s,           # TTL boundary: inclusive, 1 s beyond, 1 s inside
        [uniq.min() - s, uniq.min() - 86_400 * s, uniq.min() - 365 * 86_400 * s],  # before the first row
        np.linspace(uniq[0], uniq[1], 50).astype(np.int64),   # the gap after the old (2021) rows
        [uniq.max() + 2 * ttl],                               # after everything, beyond the TTL
        rng.integers(uniq.min() - ttl, uniq.max() + 2 * ttl, 2000),
    ])
    cand = np.unique(cand)
    all_ids = ids + [max(ids) + 1000]                         # one unknown driver
    did = np.repeat(np.array(all_ids, dtype=np.int64), len(cand))
    when = np.tile(cand, len(all_ids))
    order = rng.permutation(len(did))
    did, when = did[order], when[order]
    pq.write_table(pa.table({"row_id": np.arange(len(did), dtype=np.int64), "driver_id": did,
                             "event_timestamp": pa.array(when, pa.timestamp("us", tz="UTC"))}), out_path)
    return len(did)


def compare(feast_df, ours_df, known_ids, limit: int = 20) -> dict:
    """Row-by-row comparison in input order (Feast's output sorted back by
    row_id). Returns {"differing": rows whose values differ, "omitted": rows
    Feast did not return, "omitted_explained": those of them where ours is
    null for a known driver (Feast's Dask store drops an entity row whose key
    has rows but none in [t - ttl, t], instead of returning nulls), "lines"}."""
    import numpy as np
    feast_df = feast_df.sort_values("row_id").reset_index(drop=True)
    present = ours_df["row_id"].isin(feast_df["row_id"]).to_numpy()
    omitted = ~present
    null_known = ours_df["conv_rate"].isna().to_numpy() & ours_df["driver_id"].isin(known_ids).to_numpy()
    lines = []
    if omitted.any():
        lines.append(f"feast returned {len(feast_df)} of {len(ours_df)} rows; {int(omitted.sum())} omitted, "
                     f"{int((omitted & null_known).sum())} of them null-for-a-known-driver rows in ours; "
                     f"first omitted row_ids: {ours_df['row_id'][omitted].tolist()[:limit]}")
    aligned = ours_df[["row_id"]].merge(feast_df, on="row_id", how="left")
    bad = np.zeros(len(ours_df), dtype=bool)
    for c in FEATURES:
        x = aligned[c].astype("float64").to_numpy()
        y = ours_df[c].astype("float64").to_numpy()
        nx, ny = np.isnan(x), np.isnan(y)
        bad |= present & ((nx != ny) | (~nx & ~ny & (np.abs(x - y) > 1e-9)))
    for i in np.flatnonzero(bad | (omitted & ~null_known))[:limit]:
        r, f = ours_df.iloc[i], aligned.iloc[i]
        lines.append(f"row_id {r['row_id']} driver {r['driver_id']} t={r['event_timestamp']}: "
                     f"feast {[f[c] for c in FEATURES] if present[i] else 'omitted'} ours {[r[c] for c in FEATURES]}")
    return {"differing": int(bad.sum()), "omitted": int(omitted.sum()),
            "omitted_explained": int((omitted & null_known).sum()), "lines": lines}


def oracle(log=sys.stderr) -> dict:
    """Runs the oracle check; returns a summary dict (differing = 0 when equal)."""
    import pandas as pd
    with tempfile.TemporaryDirectory(prefix="fstore-feast-oracle-") as d:
        _py()
        for cmd, cwd in ((["init", "demo"], d), (["apply"], f"{d}/demo/feature_repo")):
            p = subprocess.run([_feast_bin("feast"), *cmd], cwd=cwd, capture_output=True, text=True, timeout=600)
            if p.returncode:
                raise RuntimeError(f"feast {cmd[0]} failed: {(p.stderr or p.stdout)[-1000:]}")
        repo = f"{d}/demo/feature_repo"
        data = f"{repo}/data/driver_stats.parquet"
        # TTL from Feast's own registry (the first run also reports it), same for us.
        from datetime import timedelta
        ttl_s = timedelta(days=1).total_seconds()
        n = oracle_entities(data, f"{d}/ent.parquet", ttl_s)
        fz = run_feast(repo, f"{d}/ent.parquet", f"{d}/feast_out.parquet", timeout=900)
        if "error" in fz:
            raise RuntimeError(f"Feast get_historical_features {fz['error']}\n{fz.get('stderr', '')}")
        if fz["ttl_s"] != ttl_s:
            raise RuntimeError(f"feast init's view has ttl {fz['ttl_s']} s, not {ttl_s}")
        mine, secs = ours(data, f"{d}/ent.parquet", ttl_s, f"{d}/store")
        theirs = pd.read_parquet(f"{d}/feast_out.parquet")
        import pyarrow.parquet as pq
        known = set(pq.read_table(data, columns=["driver_id"]).column("driver_id").to_pylist())
        cmp = compare(theirs, mine, sorted(known))
        lines = cmp.pop("lines")
        nbad = cmp["differing"] + cmp["omitted"] - cmp["omitted_explained"]
        summary = {"rows": n, "feast_rows": fz["rows"], "unexplained": nbad, **cmp, "ttl_s": ttl_s,
                   "drivers": int(mine["driver_id"].nunique()),
                   "null_rows": int(mine["conv_rate"].isna().sum()), "feast_seconds": fz["seconds"],
                   "ours_seconds": secs, "lines": lines}
        print(f"# feast oracle (feast init driver_stats, ttl {ttl_s:.0f} s): {n} entity rows, "
              f"{summary['null_rows']} null, feast {fz['rows']} rows in {fz['seconds']:.2f} s, ours {secs:.3f} s; "
              f"{cmp['differing']} rows with different values, {cmp['omitted']} rows omitted by Feast "
              f"({cmp['omitted_explained']} explained: no row within the TTL, Feast drops the entity row)"
              f"{'' if nbad == 0 else f'; {nbad} UNEXPLAINED'}", file=log, flush=True)
        for line in lines:
            print("#   " + line, file=log, flush=True)
        return summary


# ---------------------------------------------------------------- bench


def make_bench_data(d: str, feat: int, keys: int, ents, seed: int = 11) -> None:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    rng = np.random.default_rng(seed)
    base = 1_760_000_000 * 1_000_000
    ts = base + rng.integers(0, SPAN_S, feat) * 1_000_000        # whole seconds, like driver_stats' hours
    created = ts + rng.integers(0, 3_600, feat) * 1_000_000
    pq.write_table(pa.table({
        "driver_id": rng.integers(0, keys, feat),
        "event_timestamp": pa.array(ts, pa.timestamp("us", tz="UTC")),
        "created": pa.array(created, pa.timestamp("us")),
        "conv_rate": rng.random(feat, dtype=np.float32), "acc_rate": rng.random(feat, dtype=np.float32),
        "avg_daily_trips": rng.integers(0, 1000, feat)}), f"{d}/feat.parquet", row_group_size=1 << 20)
    for n in ents:
        pq.write_table(pa.table({
            "driver_id": rng.integers(0, keys, n),
            "event_timestamp": pa.array(base + rng.integers(0, SPAN_S * 1_000_000, n), pa.timestamp("us", tz="UTC"))}),
            f"{d}/ent_{n}.parquet")


def _child_ours(d: str, n: str) -> dict:
    import numpy as np
    df, secs = ours(f"{d}/feat.parquet", f"{d}/ent_{n}.parquet", TTL_S, f"{d}/store_{n}")
    c = df["conv_rate"].astype("float64").to_numpy()
    return {"seconds": secs, "rows": len(df), "checksum": float(np.nansum(c)), "nulls": int(np.isnan(c).sum()),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def bench(quick: bool, log=sys.stderr) -> list[dict]:
    """One dict per entity size: ours and Feast's seconds / peak RSS (Feast's
    may be {"error": ...}); stops after the first size Feast cannot finish."""
    s = BENCH_SIZES[quick]
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = []
    with tempfile.TemporaryDirectory(prefix="fstore-bench-feast-") as d:
        make_bench_data(d, s["feat"], s["keys"], s["ents"])
        for n in s["ents"]:
            p = subprocess.run([sys.executable, "-m", "benches.feast_oracle", "ours-child", d, str(n)], cwd=root,
                               capture_output=True, text=True)
            if p.returncode:
                raise RuntimeError(f"ours child failed:\n{p.stderr[-3000:]}")
            mine = json.loads(p.stdout.strip().splitlines()[-1])
            fz = run_feast(f"{d}/feast_repo_{n}", f"{d}/ent_{n}.parquet", "-", f"{d}/feat.parquet",
                           timeout=FEAST_TIMEOUT_S)
            row = {"ents": n, "feat": s["feat"], "keys": s["keys"], "ours": mine, "feast": fz}
            if "error" not in fz:
                # Feast omits entity rows with no row in the TTL (nulls in ours)
                same = (fz["rows"] - fz["nulls"] == mine["rows"] - mine["nulls"]
                        and abs(fz["checksum"] - mine["checksum"]) <= 1e-6 * max(1.0, abs(fz["checksum"])))
                row["agree"] = same
            fs = fz.get("error") or "%.2f s / %.0f MB" % (fz["seconds"], fz["peak_rss_mb"])
            diff = ""
            if not row.get("agree", True):
                keys = ("rows", "nulls", "checksum")
                diff = " (results DIFFER: feast %s, ours %s)" % ({k: fz[k] for k in keys}, {k: mine[k] for k in keys})
            print(f"# feast bench {n:,} x {s['feat']:,}: ours {mine['seconds']:.2f} s / {mine['peak_rss_mb']:.0f} MB; "
                  f"feast {fs}{diff}", file=log, flush=True)
            out.append(row)
            if "error" in fz or fz["seconds"] > 120:
                break
    return out


def bench_rows(quick: bool) -> list:
    """Rows for benches/run.py (called by bench_offline.run); skipped with a
    note if the Feast venv cannot be set up."""
    from benches._common import Row
    from benches.feast_peer import FeastUnavailable
    rows = []
    try:
        o = oracle()
        rows.append(Row(f"feast oracle: driver_stats, {o['rows']:,} entity rows", "rows with different values",
                        o["differing"], f"Feast 0.67 (returned {o['feast_rows']:,} rows)", 0, "rows",
                        target="0 differing"))
        results = bench(quick)
    except FeastUnavailable as e:
        print(f"# feast peer skipped: {e}", file=sys.stderr)
        return rows
    for r in results:
        fz, mine = r["feast"], r["ours"]
        label = f"pit join vs Feast {r['ents']:,} x {r['feat']:,}"
        if "error" in fz:
            rows.append(Row(label + f" (Feast {fz['error']}; ratio is a lower bound)", "seconds", mine["seconds"],
                            "Feast get_historical_features", float(FEAST_TIMEOUT_S) if "timeout" in fz["error"]
                            else float("nan"), "s", target=">= 20x Feast"))
            continue
        rows.append(Row(label, "seconds", mine["seconds"], "Feast get_historical_features", fz["seconds"], "s",
                        target=">= 20x Feast"))
        rows.append(Row(label, "peak RSS", mine["peak_rss_mb"], "Feast get_historical_features",
                        fz["peak_rss_mb"], "MB"))
    return rows


def main(argv) -> int:
    if argv[:1] == ["feast-side"]:
        repo, ent, out, *feat = argv[1:]
        print(json.dumps(feast_side(repo, ent, out, feat[0] if feat else None)))
        return 0
    if argv[:1] == ["ours-child"]:
        print(json.dumps(_child_ours(*argv[1:])))
        return 0
    o = oracle(log=sys.stdout)
    if "--bench" in argv:
        bench("--quick" in argv, log=sys.stdout)
    # --strict: Feast's omitted rows count as differences too
    return 1 if o["unexplained"] or ("--strict" in argv and o["omitted"]) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
