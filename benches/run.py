"""One runner for every benchmark: prints our figure, the peer's, and the ratio.

    python -m benches.run            # all benchmarks, full sizes
    python -m benches.run --quick    # smaller sizes, for a smoke run
    python -m benches.run --only table,wal

Each `benches/bench_*.py` module exposes `run(quick: bool) -> list[Row]`; peers
are measured in the same process and run, because these machines are shared
and noisy. Ratios are "times better than the peer" (>1 means we win).
"""
from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import pkgutil
import sys
import time

from benches._common import Row


def discover() -> list[str]:
    here = os.path.dirname(__file__)
    return sorted(m.name[len("bench_"):] for m in pkgutil.iter_modules([here]) if m.name.startswith("bench_"))


def fmt(x: float) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    if abs(x) >= 1e6:
        return f"{x:,.0f}"
    if abs(x) >= 100:
        return f"{x:,.1f}"
    return f"{x:.3g}"


def print_table(rows: list[Row]) -> None:
    header = ["bench", "metric", "ours", "peer", "peer value", "unit", "ratio", "target"]
    lines = [[r.bench, r.metric, fmt(r.ours), r.peer, fmt(r.peer_value), r.unit,
              fmt(r.ratio) + "x", r.target] for r in rows]
    widths = [max(len(h), *(len(l[i]) for l in lines)) if lines else len(h) for i, h in enumerate(header)]
    print(" | ".join(h.ljust(w) for h, w in zip(header, widths)))
    print("-+-".join("-" * w for w in widths))
    for l in lines:
        print(" | ".join(c.ljust(w) for c, w in zip(l, widths)))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smaller sizes")
    ap.add_argument("--only", default="", help="comma-separated bench names: " + ",".join(discover()))
    ap.add_argument("--json", default="", help="also write the rows as JSON to this path")
    args = ap.parse_args(argv)
    names = [n for n in args.only.split(",") if n] or discover()
    rows: list[Row] = []
    for name in names:
        mod = importlib.import_module(f"benches.bench_{name}")
        t0 = time.perf_counter()
        got = mod.run(quick=args.quick)
        rows.extend(got)
        print(f"# {name}: {len(got)} rows in {time.perf_counter() - t0:.1f}s", file=sys.stderr, flush=True)
    print_table(rows)
    if args.json:
        with open(args.json, "w") as f:
            json.dump([r.__dict__ | {"ratio": r.ratio} for r in rows], f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
