"""Online table: batch lookups, batch upserts and single gets against a
Python dict and pandas' hash table (Index.get_indexer), same keys, same run."""
from __future__ import annotations

import time

import numpy as np

from benches._common import Row, median_seconds
from fscore.schema import Schema
from fscore.table import Table

SCHEMA = Schema([("user_id", "int64")], [("amount", "float64"), ("score", "float64"), ("n", "int64"), ("ok", "bool")])


def _data(n, rng):
    keys = rng.permutation(np.arange(n, dtype=np.int64) * 7919 + 13)
    cols = {"amount": rng.random(n), "score": rng.random(n), "n": rng.integers(0, 1000, n),
            "ok": rng.random(n) < 0.5}
    return keys, cols


def run(quick: bool = False) -> list[Row]:
    import pandas as pd

    rng = np.random.default_rng(42)
    n = 100_000 if quick else 1_000_000
    batch = 1_000
    keys, cols = _data(n, rng)
    ets = np.full(n, 1_000_000, dtype=np.int64)
    table = Table(SCHEMA, capacity=n)
    t0 = time.perf_counter()
    for s in range(0, n, 100_000):
        table.put_batch(keys[s:s + 100_000], {k: v[s:s + 100_000] for k, v in cols.items()}, ets[s:s + 100_000], now=0)
    load_s = time.perf_counter() - t0

    # peers hold the same rows
    d = {int(k): (float(a), float(b), int(c), bool(o))
         for k, a, b, c, o in zip(keys, cols["amount"], cols["score"], cols["n"], cols["ok"])}
    index = pd.Index(keys)
    index.get_indexer(keys[:10])  # build pandas' hash table outside the timing
    pcols = {k: np.asarray(v) for k, v in cols.items()}

    probe_sets = [rng.choice(keys, batch) for _ in range(50)]
    it = iter(range(10**9))

    def ours_get():
        table.get_batch(probe_sets[next(it) % 50], now=2_000_000)

    def dict_get():
        q = probe_sets[next(it) % 50]
        [d.get(k) for k in q.tolist()]

    def pandas_get():
        q = probe_sets[next(it) % 50]
        pos = index.get_indexer(q)
        found = pos >= 0
        p = np.where(found, pos, 0)
        {k: v[p] for k, v in pcols.items()}

    rows = []
    ours = median_seconds(ours_get, repeat=9, number=200) / batch * 1e9
    py = median_seconds(dict_get, repeat=9, number=50) / batch * 1e9
    pdv = median_seconds(pandas_get, repeat=9, number=200) / batch * 1e9
    rows.append(Row("table", f"get_batch {batch} keys of {n:,}", ours, "python dict loop", py, "ns/key",
                    "lower", ">=20x"))
    rows.append(Row("table", f"get_batch {batch} keys of {n:,}", ours, "pandas get_indexer", pdv, "ns/key",
                    "lower", ">=0.67x (within 1.5x)"))

    # upserts of existing keys, 10k rows per batch
    ub = 10_000
    upd_sets = [rng.choice(keys, ub) for _ in range(10)]
    upd_vals = {k: v[:ub] for k, v in cols.items()}
    upd_ts = np.full(ub, 2_000_000, dtype=np.int64)

    def ours_put():
        table.put_batch(upd_sets[next(it) % 10], upd_vals, upd_ts, now=2_000_000)

    def dict_put():
        q = upd_sets[next(it) % 10]
        for k, a, b, c, o in zip(q.tolist(), upd_vals["amount"].tolist(), upd_vals["score"].tolist(),
                                 upd_vals["n"].tolist(), upd_vals["ok"].tolist()):
            d[k] = (a, b, c, o)

    def pandas_put():
        q = upd_sets[next(it) % 10]
        pos = index.get_indexer(q)
        for k, v in upd_vals.items():
            pcols[k][pos] = v

    ours = ub / median_seconds(ours_put, repeat=7, number=5)
    py = ub / median_seconds(dict_put, repeat=7, number=2)
    pdv = ub / median_seconds(pandas_put, repeat=7, number=5)
    rows.append(Row("table", f"put_batch {ub:,} upserts", ours, "python dict loop", py, "rows/s", "higher"))
    rows.append(Row("table", f"put_batch {ub:,} upserts", ours, "pandas get_indexer+assign", pdv, "rows/s", "higher"))

    single = [int(k) for k in probe_sets[0][:1000]]

    def ours_single():
        g = table.get
        for k in single:
            g(k, 2_000_000)

    def dict_single():
        g = d.get
        for k in single:
            g(k)

    ours = median_seconds(ours_single, repeat=9, number=20) / len(single) * 1e9
    py = median_seconds(dict_single, repeat=9, number=20) / len(single) * 1e9
    rows.append(Row("table", "single get from Python", ours, "dict.get", py, "ns/call", "lower", "<=1000 ns"))
    rows.append(Row("table", f"initial load of {n:,} rows", n / load_s, "-", float("nan"), "rows/s", "higher"))
    return rows
