"""Window aggregation: batch ingest and as-of lookups, against peers in the same run.

Workload: sliding(1h, 5m) with count(*), sum(amount), mean(amount) over 100k
keys (10k with --quick); events arrive in time order with jitter inside a 5m
allowed lateness, like a busy stream.

Peers:
- pure Python, incremental: `fscore.window_ref.IncrementalRefView`, the same
  ring-of-hop-buckets algorithm written in plain Python (not recomputing);
- pandas: `groupby(key, 5m bucket).agg` then `groupby(key).rolling('60min')`,
  which computes the same sliding windows (value as of each bucket end) in batch.
"""
from __future__ import annotations

import time

import numpy as np
import pandas as pd

from benches._common import Row, median_seconds
from fscore.window import WindowView
from fscore.window_ref import IncrementalRefView
from fscore.window_spec import HOUR, MINUTE, sliding

SPEC = sliding(HOUR, 5 * MINUTE)
AGGS = ["count(*)", "sum(amount)", "mean(amount)"]
LATENESS = 5 * MINUTE


def make_stream(n_keys: int, n_events: int, seed: int = 7):
    rng = np.random.default_rng(seed)
    span = 3 * HOUR
    ts = np.sort(rng.integers(0, span, n_events)) + rng.integers(-LATENESS // 2, LATENESS // 2, n_events)
    ts += 1_800_000_000 * 1_000_000  # a 2027 epoch, µs
    slots = rng.integers(0, n_keys, n_events)
    amount = rng.gamma(2.0, 30.0, n_events)
    return slots.astype(np.int64), ts.astype(np.int64), amount


def bench_update(n_keys, slots, ts, amount, batch, parts=None):
    """Events/s of WindowView.update in batches; `parts`: with a Kafka
    partition per event (lateness per partition, as the engine calls it)."""
    views = []

    def setup():
        views.append(WindowView(SPEC, AGGS, n_keys, allowed_lateness=LATENESS))

    def run():
        v = views[-1]
        for i in range(0, len(ts), batch):
            v.update(slots[i:i + batch], ts[i:i + batch], {"amount": amount[i:i + batch]},
                     parts=None if parts is None else parts[i:i + batch])

    samples = []
    for _ in range(5):
        setup()
        t0 = time.perf_counter()
        run()
        samples.append(time.perf_counter() - t0)
        views.clear()
    return len(ts) / float(np.median(samples))


def bench_python(n_keys, slots, ts, amount):
    v = IncrementalRefView(SPEC, AGGS, n_keys, allowed_lateness=LATENESS)
    t0 = time.perf_counter()
    v.update(slots, ts, {"amount": amount})
    return len(ts) / (time.perf_counter() - t0), v


def bench_pandas(slots, ts, amount):
    df = pd.DataFrame({"key": slots, "ts": ts, "amount": amount})

    def run():
        bucket = pd.to_datetime((df["ts"] // SPEC.hop) * SPEC.hop, unit="us")
        per_bucket = df.groupby([df["key"], bucket])["amount"].agg(["count", "sum"])
        per_bucket = per_bucket.reset_index(level=0)
        rolled = per_bucket.groupby("key")[["count", "sum"]].rolling("60min").sum()
        rolled["mean"] = rolled["sum"] / rolled["count"]
        return rolled

    return len(ts) / median_seconds(run, repeat=3)


def run(quick: bool) -> list[Row]:
    n_keys = 10_000 if quick else 100_000
    n_events = 300_000 if quick else 4_000_000
    n_py = 30_000 if quick else 300_000
    slots, ts, amount = make_stream(n_keys, n_events)
    ours = bench_update(n_keys, slots, ts, amount, batch=65_536)
    tagged = bench_update(n_keys, slots, ts, amount, batch=5_000, parts=slots % 6)
    untagged = bench_update(n_keys, slots, ts, amount, batch=5_000)
    py_rate, py_view = bench_python(n_keys, slots[:n_py], ts[:n_py], amount[:n_py])
    pd_rate = bench_pandas(slots, ts, amount)
    target = "≥5M ev/s; ≥25x py"
    rows = [
        Row("window", f"update sliding(1h,5m) x3 aggs, {n_keys // 1000}k keys", ours,
            "pure Python incremental", py_rate, "events/s", better="higher", target=target),
        Row("window", f"update sliding(1h,5m) x3 aggs, {n_keys // 1000}k keys", ours,
            "pandas groupby().rolling()", pd_rate, "events/s", better="higher", target="≥5M ev/s"),
        Row("window", "update, 5,000-event batches with a Kafka partition each (6)", tagged,
            "same batches without partitions", untagged, "events/s", better="higher", target="≈1x"),
    ]

    # value_as_of for 1,000 keys, as the online path asks it (t = now).
    view = WindowView(SPEC, AGGS, n_keys, allowed_lateness=LATENESS)
    view.update(slots, ts, {"amount": amount})
    rng = np.random.default_rng(11)
    keys = rng.integers(0, n_keys, 1000)
    now = int(ts.max()) + 1
    ours_us = median_seconds(lambda: view.value_as_of(keys, now), repeat=7, number=20) * 1e6
    py_keys = keys.tolist()
    py_us = median_seconds(lambda: [py_view.value_one(k, now) for k in py_keys], repeat=3) * 1e6
    rows.append(Row("window", "value_as_of 1k keys", ours_us, "pure Python incremental", py_us,
                    "µs/call", better="lower"))
    return rows
