"""Writes tests/data/window_v6_*.bin and window_v6_answers.json: version-6
snapshots (`n` in a column only last_k reads, and in one read by last_k and
approx_count_distinct) with their answers, for the test that later layouts
still load them. Run with fscore at e7d1b2a: `python tests/data/make_window_v6.py`."""
import json
import pathlib

import numpy as np

from fscore.window import WindowView
from fscore.window_spec import continuous, lifetime, session, sliding

HERE = pathlib.Path(__file__).parent
AGGS = ["count(*)", "sum(x)", "count(x)", "last_k(x, 3)", "last_k(y, 3)", "approx_count_distinct(z)",
        "last_k(z, 2)"]
VIEWS = {"sliding": (sliding(100, 10), None), "continuous": (continuous(100, 10), None),
         "session": (session(30), None), "lifetime": (lifetime(), None),
         "shared": (sliding(100, 10), [sliding(100, 10), sliding(50, 10), sliding(100, 10), sliding(30, 10),
                                       sliding(100, 10), sliding(50, 10), sliding(100, 10)])}
TIMES = [50, 100, 150, 185, 195, 199, 260]


def events():
    """Six keys: a ring (an event every 3 units), a few events, dense
    registers (40 distinct z in one bucket), a dropped bucket (one old event,
    then many later), one event, none; nulls in y and z."""
    rng = np.random.default_rng(6)
    out = [(0, t, float(t % 7), float(t % 5) if t % 4 else np.nan, float(t % 11)) for t in range(0, 195, 3)]
    out += [(1, t, float(t), float(-t), np.nan) for t in (150, 160, 170)]
    out += [(2, 180 + (i % 5), float(i), float(i * 2), float(i)) for i in range(40)]
    out += [(3, 5, 1.0, 1.0, 1.0)] + [(3, 190 + i % 5, float(i), np.nan, float(i % 3)) for i in range(12)]
    out += [(4, 191, 2.5, 7.0, 3.0)]
    out.sort(key=lambda e: (e[1], rng.random()))
    return out


def main():
    ev = events()
    slots = np.array([e[0] for e in ev], dtype=np.int64)
    ts = np.array([e[1] for e in ev], dtype=np.int64)
    cols = {c: np.array([e[2 + i] for e in ev]) for i, c in enumerate("xyz")}
    answers = {}
    for name, (spec, agg_specs) in VIEWS.items():
        v = WindowView(spec, AGGS, 6, allowed_lateness=100, hll_p=6, agg_specs=agg_specs)
        v.update(slots, ts, cols)
        assert v.dense_hll_blocks > 0
        (HERE / f"window_v6_{name}.bin").write_bytes(v.to_bytes())
        answers[name] = {}
        for t in TIMES:
            vals, exact = v.value_as_of(np.arange(6), t)
            answers[name][str(t)] = {"exact": exact.tolist()} | {k: np.asarray(a).tolist() for k, a in vals.items()}
    (HERE / "window_v6_answers.json").write_text(json.dumps(answers, indent=0))


if __name__ == "__main__":
    main()
