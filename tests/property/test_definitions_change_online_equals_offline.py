"""Online equals offline across definition changes (stop 48): random pushes
(out of order, some ahead of the clock), checkpoints, crashes and clean
restarts, with views applied to the running store at random points — a
windowed view and a plain view added, and the stream's allowed lateness
changed — by `Engine.reload` or while the engine is closed. At every read,
and at the end, every view's online values equal its training set as of the
same time.

Before: a view applied to a store that had events served only the events
pushed after it; a plain view served rows ahead of the clock; a lateness
change left the windows dropping the events the engine admitted; a push
whose fsync wait spanned a reload missed the new views. Lateness is a day
here (every event is applied: the training set counts late events, the
online state does not until a materialize heals them)."""
from __future__ import annotations

import math
import os
import uuid

import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from fsapp.engine import Engine
from fsapp.registry.repo import Repo

S = 1_000_000
B = 1_764_000_000 // 3600 * 3600 * S
BASE = """
CREATE ENTITY ent (k BIGINT);
CREATE STREAM ev (k BIGINT, x DOUBLE, ts TIMESTAMP) WITH (timestamp = 'ts', allowed_lateness = '{lateness}');
CREATE FEATURE VIEW va AS SELECT k, count(*) OVER sliding('60s', '20s') AS a_c, sum(x) OVER lifetime() AS a_s FROM ev;
"""
ADDED = [
    "CREATE FEATURE VIEW vb AS SELECT k, count(*) OVER lifetime() AS b_n, max(x) OVER sliding('90s', '30s') AS b_max, "
    "count(*) OVER session('25s') AS b_sess FROM ev WHERE x > 0;\n",
    "CREATE FEATURE VIEW vc AS SELECT k, x AS c_x FROM ev;\n",
]
FEATURES = {"va": ["va:a_c", "va:a_s"], "vb": ["vb:b_n", "vb:b_max", "vb:b_sess"], "vc": ["vc:c_x"]}
KEYS = [0, 1, 2]
COUNTS = {"a_c", "b_n", "b_sess"}

step = st.one_of(
    st.tuples(st.just("push"), st.lists(st.tuples(st.sampled_from(KEYS), st.sampled_from([-90, -40, -25, -5, -1, 0, 15]),
                                                  st.sampled_from([1.0, -2.0, 0.5, None])), min_size=1, max_size=4)),
    st.tuples(st.just("advance"), st.sampled_from([1, 5, 10, 20, 30])),
    st.tuples(st.just("add"), st.booleans()),  # the next view, by a reload (True) or while closed
    st.tuples(st.just("lateness"), st.booleans()),
    st.tuples(st.just("checkpoint"), st.just(None)),
    st.tuples(st.just("restart"), st.sampled_from(["close", "crash"])),
    st.tuples(st.just("read"), st.just(None)),
)


def _defs(added: int, lateness: str) -> str:
    return BASE.format(lateness=lateness) + "".join(ADDED[:added])


def _check(eng, added: int, t: int, where: str) -> None:
    feats = [f for view in ("va", "vb", "vc")[:1 + added] for f in FEATURES[view]]
    eng.tick()
    got = eng.get_online_features(feats, entities={"k": KEYS}, now=t)
    labels = pa.table({"k": KEYS, "event_timestamp": pa.array([t] * len(KEYS), pa.timestamp("us", tz="UTC"))})
    offline = eng.get_historical_features(labels, feats).to_arrow()
    for ref, res in zip(feats, got["results"][1:]):
        name = ref.split(":")[1]
        for i, key in enumerate(KEYS):
            on, off = res["values"][i], offline.column(name)[i].as_py()
            if name in COUNTS and off is None:
                off = 0
            same = on == off if on is None or off is None or isinstance(on, int) else math.isclose(on, off, abs_tol=1e-9)
            assert same, f"{where}: {ref} of key {key} as of {(t - B) / S}s: online {on} != training set {off}"


@settings(max_examples=int(os.environ.get("FSTORE_OEO_EXAMPLES", "25")), deadline=None)
@given(steps=st.lists(step, min_size=3, max_size=14))
def test_views_applied_to_a_running_store_serve_what_their_training_sets_read(tmp_path_factory, steps):
    root = tmp_path_factory.mktemp("defs") / uuid.uuid4().hex
    root.mkdir()
    (root / "fstore.yaml").write_text("project: d\n")
    added, lateness = 0, "1d"
    (root / "defs.sql").write_text(_defs(added, lateness))
    repo = Repo(root)
    repo.apply()
    clock = [B]
    data = str(root / "data" / "engine")

    def open_engine():
        return Engine(data, str(repo.registry_path), fsync="never", clock=lambda: clock[0], repo_root=str(root))

    eng = open_engine()
    try:
        for i, (op, arg) in enumerate(steps):
            where = f"step {i} ({op})"
            if op == "push":
                eng.push("ev", {"k": [e[0] for e in arg], "ts": [clock[0] + e[1] * S for e in arg],
                                "x": [e[2] for e in arg]})
            elif op == "advance":
                clock[0] += arg * S
            elif op in ("add", "lateness"):
                if op == "add":
                    if added == len(ADDED):
                        continue
                    added += 1
                else:
                    lateness = "2d" if lateness == "1d" else "1d"
                (root / "defs.sql").write_text(_defs(added, lateness))
                if arg:  # applied to the running engine
                    repo.apply()
                    eng.reload()
                else:  # applied while it is down
                    eng.close()
                    repo.apply()
                    eng = open_engine()
            elif op == "checkpoint":
                eng.checkpoint()
            elif op == "restart":
                if arg == "crash":
                    eng.wal.abandon()  # what kill -9 leaves
                    for rt in eng.runtimes.values():
                        rt.table.close()
                else:
                    eng.close()
                eng = open_engine()
            else:
                _check(eng, added, clock[0], where)
            assert eng.stats()["window_dropped"] == 0, f"{where}: a window dropped events the engine admitted"
        clock[0] += 1 * S
        _check(eng, added, clock[0], "at the end")
    finally:
        eng.close()
