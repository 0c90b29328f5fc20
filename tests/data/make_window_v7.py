"""Writes tests/data/window_v7_*.bin and window_v7_answers.json: version-7
snapshots of views whose one last_k column holds its whole buffer (2k words)
in every cell — a column with `n` (sum beside it) and one without — with
their answers, for the test that the layout with last_k buffers sized by use
still loads them. Run with fscore at 35b874a: `python tests/data/make_window_v7.py`."""
import json
import pathlib

import numpy as np

from fscore.window import WindowView
from fscore.window_spec import continuous, lifetime, session, sliding

HERE = pathlib.Path(__file__).parent
AGGS = {"counted": ["count(*)", "sum(x)", "last_k(x, 3)"],      # x keeps `n`: its unused times are not marked
        "alone": ["count(*)", "max(x)", "last_k(y, 4)"]}        # y only last_k reads: no `n`
VIEWS = {"sliding": (sliding(100, 10), None), "continuous": (continuous(100, 10), None),
         "session": (session(30), None), "lifetime": (lifetime(), None),
         "shared": (sliding(100, 10), [sliding(100, 10), sliding(50, 10), sliding(30, 10)])}
TIMES = [50, 100, 150, 185, 195, 199, 260]


def events():
    """Six keys: a ring (an event every 3 units), three events, many in one
    bucket (ties on time), an old event then many later, one event, none;
    nulls in x and y."""
    rng = np.random.default_rng(7)
    out = [(0, t, float(t % 7) if t % 5 else np.nan, float(t % 5) if t % 4 else np.nan) for t in range(0, 195, 3)]
    out += [(1, t, float(t), float(-t)) for t in (150, 160, 170)]
    out += [(2, 180 + (i % 5), float(i), float(i * 2)) for i in range(40)]
    out += [(3, 5, 1.0, 1.0)] + [(3, 190 + i % 5, float(i), np.nan) for i in range(12)]
    out += [(4, 191, 2.5, 7.0)]
    out.sort(key=lambda e: (e[1], rng.random()))
    return out


def main():
    ev = events()
    slots = np.array([e[0] for e in ev], dtype=np.int64)
    ts = np.array([e[1] for e in ev], dtype=np.int64)
    cols = {c: np.array([e[2 + i] for e in ev]) for i, c in enumerate("xy")}
    answers = {}
    for agg_name, aggs in AGGS.items():
        for name, (spec, agg_specs) in VIEWS.items():
            v = WindowView(spec, aggs, 6, allowed_lateness=100, agg_specs=agg_specs)
            v.update(slots, ts, {c: cols[c] for c in v.columns})
            key = f"{agg_name}_{name}"
            (HERE / f"window_v7_{key}.bin").write_bytes(v.to_bytes())
            answers[key] = {}
            for t in TIMES:
                vals, exact = v.value_as_of(np.arange(6), t)
                answers[key][str(t)] = {"exact": exact.tolist()} | {k: np.asarray(a).tolist() for k, a in vals.items()}
    (HERE / "window_v7_answers.json").write_text(json.dumps(answers, indent=0))


if __name__ == "__main__":
    main()
