"""The engine as a hypothesis state machine (issue 13): random valid pushes,
every class of invalid push, retries with idempotency keys, crashes (the WAL
abandoned as kill -9 leaves it) and restarts, checkpoints and clean reopens.

Pushes come with or without Kafka partitions (tags, as Kafka ingestion
sends them: each key's events from one partition): lateness is judged per
partition, and pushes without one share a watermark of their own.

Invariants: a refused push changes nothing (no WAL record, same answers);
every restart succeeds and sets nothing aside; a retry with a known key
returns the first answer and applies nothing; the online values always equal
the documented rules (fscore.window_ref) over exactly the acknowledged, not
late events."""
from __future__ import annotations

import math
import os

import numpy as np
import pytest
from hypothesis import settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from fscore.errors import KeyEncodingError
from fscore.window_ref import values_as_of

from fsapp.engine import Engine
from fsapp.engine.errors import BatchError
from fsapp.registry.catalog import Registry
from fsapp.registry.repo import Repo
from tests.pushing import PushInside

S = 1_000_000
B = 1_764_000_000 // 3600 * 3600 * S
DEFS = """
CREATE ENTITY ent (k BIGINT);
CREATE STREAM ev (k BIGINT, x DOUBLE, ts TIMESTAMP) WITH (timestamp = 'ts', allowed_lateness = '5s');
CREATE FEATURE VIEW w AS SELECT k,
    count(*) OVER sliding('30s', '10s') AS c,
    sum(x) OVER continuous('60s', '20s') AS total,
    min(x) OVER sliding('60s', '20s') AS low,
    last_k(x, 2) OVER lifetime() AS lk,
    max(x) OVER session('15s') AS peak
FROM ev;
"""
KEYS = [1, 2, 3]
MAX_MEMORY = 6_000  # the eviction machine's max_memory: ~16 keys of one event each in view w


def partition_of(k: int) -> int:
    """A keyed topic: each key's events come from one partition."""
    return (k - 1) % 2
# `total` and `low` (one hop, one size) share one view's cells (share_views)
FEATURES = ["w:c", "w:total", "w:low", "w:lk", "w:peak"]


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    root = tmp_path_factory.mktemp("sm") / "repo"
    root.mkdir()
    (root / "fstore.yaml").write_text("project: sm\n")
    (root / "defs.sql").write_text(DEFS)
    r = Repo(root)
    r.apply()
    return r


INVALID = [
    ({"k": 1.5}, BatchError), ({"k": "2"}, BatchError), ({"k": True}, BatchError), ({"x": True}, BatchError),
    ({"x": "NaN"}, BatchError), ({"x": "\ud800"}, BatchError), ({"colour": 1}, BatchError),
    ({"ts": "yesterday"}, BatchError), ({"k": None}, BatchError), ({"ahead": True}, BatchError),
]


class EngineMachine(RuleBasedStateMachine):
    repo = None
    tmp = None
    keys = KEYS

    @initialize()
    def start(self):
        self.data = os.path.join(self.tmp, f"e{id(self)}-{os.urandom(4).hex()}")
        self.clock = B
        self.eng = self._open()
        self.applied = []      # (k, ts, seq, x) acknowledged and not late
        self.watermarks = {}   # partition (None: pushes without one) -> newest applied ts
        self.seq = 0
        self.offset = 0
        self.answers = {}      # idempotency key -> first answer

    def _open(self):
        eng = Engine(self.data, str(self.repo.registry_path), fsync="never", clock=lambda: self.clock,
                     repo_root=str(self.repo.root))
        assert eng.quarantined == 0, "a restart set a record aside"
        return eng

    def _push(self, events, key=None, tagged=False):
        tags = [partition_of(e[0]) for e in events] if tagged else None
        offsets = None
        if tagged:
            self.offset += len(events)
            offsets = {"t/0": self.offset}
        res = self.eng.push("ev", {"k": [e[0] for e in events], "ts": [e[1] for e in events],
                                   "x": [e[2] for e in events]}, idempotency_key=key, tags=tags, offsets=offsets)
        late = 0
        for i, (k, ts, x) in enumerate(events):
            part = None if tags is None else tags[i]
            wm = self.watermarks.get(part)
            if wm is not None and ts < wm - 5 * S:
                late += 1
            else:
                self.watermarks[part] = ts if wm is None else max(wm, ts)
                self.applied.append((k, ts, self.seq, np.nan if x is None else x))
            self.seq += 1
        assert res.late == late and res.accepted == len(events) - late
        return res

    @rule(data=st.data(), n=st.integers(1, 4), key=st.sampled_from([None, None, "a", "b", "c", "d"]),
          tagged=st.booleans())
    def push(self, data, n, key, tagged):
        events = [(data.draw(st.sampled_from(self.keys)), self.clock - data.draw(st.sampled_from([0, 1, 3, 6, 9, 12, 25])) * S
                   - data.draw(st.sampled_from([0, 1])), data.draw(st.sampled_from([1.0, -2.0, 0.5, None])))
                  for _ in range(n)]
        if key is not None and key in self.answers:
            lsn = self.eng.applied_lsn
            again = self.eng.push("ev", {"k": [e[0] for e in events], "ts": [e[1] for e in events],
                                         "x": [e[2] for e in events]}, idempotency_key=key)
            assert again.to_dict() == self.answers[key] and self.eng.applied_lsn == lsn
            return
        res = self._push(events, key, tagged)
        if key is not None:
            self.answers[key] = res.to_dict()

    @rule(case=st.sampled_from(INVALID))
    def invalid_push(self, case):
        change, exc = case
        row = {"k": 1, "x": 1.0, "ts": self.clock - S}
        if change.get("ahead"):
            row["ts"] = self.clock + 2 * 3600 * S
        else:
            row.update(change)
        lsn, wal_lsn = self.eng.applied_lsn, self.eng.wal.last_lsn
        with pytest.raises((exc, KeyEncodingError)):
            self.eng.push("ev", [row])
        assert self.eng.applied_lsn == lsn and self.eng.wal.last_lsn == wal_lsn

    @rule(dt=st.sampled_from([1, 4, 5, 9, 10, 11, 20, 40]))
    def advance(self, dt):
        self.clock += dt * S

    @rule()
    def crash_and_restart(self):
        self.eng.wal.abandon()  # what kill -9 leaves: only written records survive
        for rt in self.eng.runtimes.values():
            rt.table.close()
        self.eng = self._open()

    @rule()
    def checkpoint(self):
        self.eng.checkpoint()

    @rule()
    def compact(self):
        # every window laid out again, however little of its pool is free
        self.eng.compact(min_waste=0, min_bytes=0)
        for rt in self.eng.runtimes.values():
            for w in rt.windows:
                w._check_pool()
                assert w.pool_waste == 0

    @rule()
    def close_and_reopen(self):
        self.eng.close()
        self.eng = self._open()

    def _online(self) -> dict:
        """The keys' online values after a tick: {feature: [value a key]}."""
        self.eng.tick()
        assert self.eng.stats()["window_dropped"] == 0, "a window dropped events the engine admitted"
        out = self.eng.get_online_features(FEATURES, entities={"k": self.keys}, now=self.clock)
        self.found = [any(r["statuses"][i] != "NOT_FOUND" for r in out["results"][1:]) for i in range(len(self.keys))]
        return {n: r["values"] for n, r in zip(out["metadata"]["feature_names"][1:], out["results"][1:])}

    def _mismatch(self, got: dict, i: int, mine: list) -> str | None:
        """Where key i's online values differ from the rules over `mine`
        (its events), or None."""
        for spec, aggs in self.groups:
            want = values_as_of(spec, aggs, mine, self.clock)
            for a in aggs:
                v, on = want[a.name], got[a.name][i]
                if a.kind == "last_k":
                    v = [x for x in v if x == x] or None
                elif isinstance(v, float) and math.isnan(v):
                    v = None
                ok = (on == v) if v is None or on is None or a.kind != "sum" else math.isclose(on, v, abs_tol=1e-9)
                if not ok:
                    return f"{a.name} of key {self.keys[i]} at {(self.clock - B) / S}s: online {on} != rules {v}"
        return None

    def _events_of(self, key) -> list:
        return [(ts, seq, {"x": x}) for k, ts, seq, x in self.applied if k == key]

    @invariant()
    def online_values_follow_the_rules(self):
        if not hasattr(self, "eng"):
            return
        got = self._online()
        for i, key in enumerate(self.keys):
            wrong = self._mismatch(got, i, self._events_of(key))
            assert wrong is None, wrong

    def teardown(self):
        if hasattr(self, "eng"):
            self.eng.close()


class GrowingEngineMachine(EngineMachine):
    """The machine above over 40 keys in tables of 4 rows at first: online
    tables and the windows' per-key arrays grow again and again, by a push
    that finds them full and ahead of need (Engine.grow_tables), and pushes
    land inside a growth's copy, a copy-mode checkpoint's copies and a
    compaction's (where the engine lock is free and another thread's push
    would), some of them with keys that make a table grow meanwhile. Same
    invariant: every key's online values equal the rules over what was
    acknowledged, before and after crashes, restarts and checkpoints."""

    keys = list(range(1, 41))

    def _open(self):
        eng = Engine(self.data, str(self.repo.registry_path), fsync="never", clock=lambda: self.clock,
                     repo_root=str(self.repo.root), capacity=4, grow_ahead=False)
        assert eng.quarantined == 0, "a restart set a record aside"
        return eng

    def _batches(self, data, most: int = 3) -> list:
        return [[(data.draw(st.sampled_from(self.keys), label="key"),
                  self.clock - data.draw(st.sampled_from([0, 1, 3, 6, 12]), label="age") * S,
                  data.draw(st.sampled_from([1.0, -2.0, 0.5]), label="x"))
                 for _ in range(data.draw(st.integers(1, 12), label="rows"))]
                for _ in range(data.draw(st.integers(1, most), label="pushes"))]

    def _pushing(self, batches: list, tagged: bool):
        def push():
            if batches:
                self._push(batches.pop(), tagged=tagged)
        return push

    def _inside_windows(self, method: str, push) -> None:
        for rt in self.eng.runtimes.values():
            rt.windows = [PushInside(w, method, push) for w in rt.windows]

    def _unwrap_windows(self) -> None:
        for rt in self.eng.runtimes.values():
            rt.windows = [w.view if isinstance(w, PushInside) else w for w in rt.windows]

    @rule(data=st.data(), tagged=st.booleans())
    def push_many_keys(self, data, tagged):
        for events in self._batches(data, most=2):
            self._push(events, tagged=tagged)

    @rule(data=st.data(), mode=st.sampled_from(["copy", "fork"]), tagged=st.booleans())
    def checkpoint_with_pushes_inside(self, data, mode, tagged):
        self.eng.checkpoint_mode = mode
        self._inside_windows("frozen_begin", self._pushing(self._batches(data), tagged))
        try:
            self.eng.checkpoint()
        finally:
            self._unwrap_windows()

    @rule(data=st.data(), tagged=st.booleans())
    def compact_with_pushes_inside(self, data, tagged):
        self._inside_windows("compact_begin", self._pushing(self._batches(data), tagged))
        try:
            self.eng.compact(min_waste=0, min_bytes=0)
        finally:
            self._unwrap_windows()

    @rule(data=st.data(), tagged=st.booleans())
    def grow_ahead_with_pushes_inside(self, data, tagged):
        push = self._pushing(self._batches(data, most=4), tagged)

        class PushingStop:  # grow_tables asks it between steps, grow_copy between chunks of its copy
            def is_set(self):
                push()
                return False
        self.eng.grow_tables(free_share=0.5, stop=PushingStop())
        for rt in self.eng.runtimes.values():
            assert len(rt.table) <= rt.table.capacity
            assert all(w.n_slots >= len(rt.table) for w in rt.windows)


class EvictingEngineMachine(GrowingEngineMachine):
    """The growing machine with `max_keys` 12 for its 40 keys: pushes of
    new keys evict others (expired first, then the least recently updated)
    while tables grow, checkpoints copy and compactions lay windows out
    again. An evicted key reads NOT_FOUND and starts over when it returns,
    so every key's online values must be the rules over its events from
    some point on (all of them, the last few, or none: NOT_FOUND) — never
    another key's values, never a mix of its old and new state."""

    max_keys, max_memory = 12, None

    def _open(self):
        eng = Engine(self.data, str(self.repo.registry_path), fsync="never", clock=lambda: self.clock,
                     repo_root=str(self.repo.root), capacity=4, max_keys=self.max_keys, max_memory=self.max_memory,
                     grow_ahead=False)
        assert eng.quarantined == 0, "a restart set a record aside"
        return eng

    def _push(self, events, key=None, tagged=False):
        res = super()._push(events, key, tagged)
        if self.max_memory is not None:  # a push that ends over the bound evicts down to 90% of it
            held = sum(self.eng.state_bytes().values())
            assert held <= self.max_memory, f"a push left {held} bytes of live state, over max_memory {self.max_memory}"
        return res

    @invariant()
    def online_values_follow_the_rules(self):
        if not hasattr(self, "eng"):
            return
        got = self._online()
        if self.max_keys is not None:
            assert sum(self.found) <= self.max_keys, f"{sum(self.found)} keys found with max_keys {self.max_keys}"
        for i, key in enumerate(self.keys):
            if not self.found[i]:
                continue  # NOT_FOUND: evicted (or never pushed)
            mine = self._events_of(key)
            # (the rules over all its events first: the common case, one evaluation)
            wrongs = [self._mismatch(got, i, mine[j:]) for j in range(len(mine))]
            assert None in wrongs, f"key {key} reads values of no suffix of its events: {wrongs[0]}"


def run_machine(base: type, repo, tmp_path, examples: int, steps: int, **attrs) -> None:
    """Runs a machine class over the repo's view `w` (`attrs` set on it)."""
    reg = Registry(repo.registry_path)
    groups = [(spec, list(aggs)) for spec, aggs in reg.feature_view("w").window_groups()]
    reg.close()

    class Machine(base):
        pass

    for name, value in attrs.items():
        setattr(Machine, name, value)
    Machine.repo, Machine.tmp, Machine.groups = repo, str(tmp_path), groups
    Machine.TestCase.settings = settings(max_examples=int(os.environ.get("FSTORE_MACHINE_EXAMPLES", examples)),
                                         stateful_step_count=steps, deadline=None)
    Machine.TestCase().runTest()


def test_engine_state_machine(repo, tmp_path):
    run_machine(EngineMachine, repo, tmp_path, 40, 20)


def test_engine_state_machine_with_growth_and_copies(repo, tmp_path):
    run_machine(GrowingEngineMachine, repo, tmp_path, 20, 25)


@pytest.mark.parametrize("bound", ["max_keys", "max_memory"])
def test_engine_state_machine_with_eviction(repo, tmp_path, bound):
    bounds = {"max_keys": {}, "max_memory": {"max_keys": None, "max_memory": MAX_MEMORY}}[bound]
    run_machine(EvictingEngineMachine, repo, tmp_path, 20, 25, **bounds)
