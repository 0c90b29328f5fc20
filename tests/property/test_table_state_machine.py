"""Random operation sequences on the Cython table and its pure-Python twin
must give identical answers (hypothesis RuleBasedStateMachine)."""
import os

import numpy as np
from hypothesis import settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from fscore import jsonenc
from fscore.schema import Schema
from fscore.table import Table
from fscore.table_ref import RefTable

COLUMNS = [("x", "float64"), ("n", "int64"), ("b", "bool"), ("s", "string", 5), ("v", "vector", 2),
           ("w", "vector64", 2), ("l", "list", 3)]
INT_KEYS = st.integers(-3, 12) | st.sampled_from([-(2**63), 2**63 - 1])
STR_KEYS = st.sampled_from(["", "a", "b", "ab", "é", "zzzz"])
floats = st.floats(allow_nan=False, width=64)
small_strings = st.text(alphabet="abcé", max_size=2)


def _nan_safe(v):
    """A row tuple with NaN spelled "nan" (NaN != NaN would fail equal rows)."""
    if isinstance(v, tuple):
        return tuple(_nan_safe(x) for x in v)
    return "nan" if isinstance(v, float) and v != v else v


def _compare_results(a, b, schema):
    assert a.status.tolist() == b.status.tolist()
    assert a.event_ts.tolist() == b.event_ts.tolist()
    assert a.created_ts.tolist() == b.created_ts.tolist()
    for f in schema.columns:
        assert a.nulls[f.name].tolist() == b.nulls[f.name].tolist(), f.name
        if a.values[f.name].dtype.kind == "f":  # NaN: a list's unused tail, or a NaN element
            assert np.array_equal(a.values[f.name], b.values[f.name], equal_nan=True), f.name
        else:
            assert a.values[f.name].tolist() == b.values[f.name].tolist(), f.name


class TableMachine(RuleBasedStateMachine):
    schema = None
    key_strategy = None

    @initialize(capacity=st.integers(1, 12), ttl=st.sampled_from([0, 0, 5, 50]),
                max_capacity=st.sampled_from([None, None, 20, 40]))
    def create(self, capacity, ttl, max_capacity):
        self.fast = Table(self.schema, capacity=capacity, ttl_us=ttl, max_capacity=max_capacity)
        self.ref = RefTable(self.schema, capacity=capacity, ttl_us=ttl, max_capacity=max_capacity)
        self.now = 100

    def keys_array(self, keys):
        if len(self.schema.keys) == 1:
            return np.array(keys, dtype=np.int64)
        return {"k": np.array([k[0] for k in keys], dtype=np.int64),
                "ks": np.array([k[1] for k in keys], dtype=object)}

    @rule(data=st.data(), n=st.integers(0, 6))
    def put(self, data, n):
        keys = data.draw(st.lists(self.key_strategy, min_size=n, max_size=n))
        ets = data.draw(st.lists(st.integers(self.now - 60, self.now + 5), min_size=n, max_size=n))
        cts = data.draw(st.lists(st.integers(0, 3), min_size=n, max_size=n))
        present = data.draw(st.sets(st.sampled_from([c[0] for c in COLUMNS])))
        values = {}
        if "x" in present:
            values["x"] = np.array(data.draw(st.lists(floats, min_size=n, max_size=n)), dtype=np.float64)
        if "n" in present:
            values["n"] = np.array(data.draw(st.lists(st.integers(-(2**63), 2**63 - 1), min_size=n, max_size=n)),
                                   dtype=np.int64)
        if "b" in present:
            values["b"] = np.array(data.draw(st.lists(st.booleans(), min_size=n, max_size=n)), dtype=np.bool_)
        if "s" in present:
            values["s"] = np.array(data.draw(st.lists(st.none() | small_strings, min_size=n, max_size=n)), dtype=object)
        if "v" in present:
            values["v"] = np.array(data.draw(st.lists(st.lists(st.floats(-1e6, 1e6, width=32), min_size=2, max_size=2),
                                                      min_size=n, max_size=n)), dtype=np.float32).reshape(n, 2)
        if "w" in present:
            values["w"] = np.array(data.draw(st.lists(st.lists(floats | st.just(np.nan), min_size=2, max_size=2),
                                                      min_size=n, max_size=n)), dtype=np.float64).reshape(n, 2)
        if "l" in present:  # a list: up to 3 items, the unused tail NaN
            items = data.draw(st.lists(st.lists(floats, max_size=3), min_size=n, max_size=n))
            values["l"] = np.array([x + [np.nan] * (3 - len(x)) for x in items], dtype=np.float64).reshape(n, 3)
        nulls = {"x": np.array(data.draw(st.lists(st.booleans(), min_size=n, max_size=n)), dtype=bool)}
        args = (self.keys_array(keys), values, np.array(ets, dtype=np.int64), np.array(cts, dtype=np.int64))
        a = self.fast.put_batch(*args, now=self.now, nulls=nulls)
        b = self.ref.put_batch(*args, now=self.now, nulls=nulls)
        assert a == b

    @rule(dt=st.integers(0, 30))
    def advance_clock(self, dt):
        self.now += dt

    @rule(data=st.data())
    def get_batch(self, data):
        keys = data.draw(st.lists(self.key_strategy, max_size=8))
        _compare_results(self.fast.get_batch(self.keys_array(keys), now=self.now),
                         self.ref.get_batch(self.keys_array(keys), now=self.now), self.schema)

    @rule(data=st.data())
    def get_rows_and_json(self, data):
        """Row images and their JSON (fscore.jsonenc.table_results, read
        straight into C buffers) agree with get_batch for the same keys,
        given as arrays or with the int64 key column as a plain list (what
        the online read passes)."""
        keys = data.draw(st.lists(self.key_strategy, max_size=8))
        arr = self.keys_array(keys)
        forms = [arr, list(keys) if len(self.schema.keys) == 1 else {"k": [k[0] for k in keys], "ks": arr["ks"]}]
        expected = self.ref.get_batch(arr, now=self.now)
        specs = jsonenc.column_specs(self.fast.column_layout(), [c[0] for c in COLUMNS])
        status, ets, rows = self.fast.get_rows(arr, now=self.now)
        assert status.tolist() == expected.status.tolist() and ets.tolist() == expected.event_ts.tolist()
        want = jsonenc.row_results(rows, status, ets, specs, joined=True)
        for form in forms:
            _compare_results(self.fast.get_batch(form, now=self.now), expected, self.schema)
            again = self.fast.get_rows(form, now=self.now)
            assert all((x == y).all() for x, y in zip(again, (status, ets, rows)))
            assert jsonenc.table_results(self.fast, form, self.now, specs, joined=True) == want

    @rule(data=st.data())
    def get_one(self, data):
        key = data.draw(self.key_strategy)
        a, b = self.fast.get(key, now=self.now), self.ref.get(key, now=self.now)
        assert _nan_safe(a) == _nan_safe(b)

    @rule(data=st.data())
    def delete(self, data):
        keys = data.draw(st.lists(self.key_strategy, max_size=4))
        assert self.fast.delete_batch(self.keys_array(keys)) == self.ref.delete_batch(self.keys_array(keys))

    @rule(data=st.data(), hide=st.booleans())
    def hide_or_show(self, data, hide):
        """Hidden rows (a Kafka partition being rebuilt) read NOT_FOUND and
        are otherwise held, written, evicted and deleted as before."""
        keys = data.draw(st.lists(self.key_strategy, max_size=4))
        rows = self.fast.find_rows(self.keys_array(keys))
        rows = np.unique(rows[rows >= 0])
        if hide:
            assert self.fast.hide_rows(rows) == self.ref.hide(self.keys_array(keys))
        else:
            assert self.fast.show_rows(rows) == self.ref.show(self.keys_array(keys))

    @rule(hidden=st.booleans())
    def insert_hidden(self, hidden):
        self.fast.insert_hidden = self.ref.insert_hidden = hidden

    @rule()
    def expire(self):
        assert self.fast.expire(self.now) == self.ref.expire(self.now)

    @rule()
    def snapshot_and_restore(self):
        self.fast = Table.from_snapshot(self.fast.snapshot(), max_capacity=self.fast.max_capacity)
        self.fast.insert_hidden = self.ref.insert_hidden  # the writer's mode, not the table's state

    @rule(extra=st.integers(1, 20))
    def grow(self, extra):
        """Explicit growth keeps every row, its id and every answer."""
        live = self.fast.live_rows()
        keys_before = self.fast.row_keys(live)
        self.fast.grow(self.fast.capacity + extra)
        self.ref.grow(self.ref.capacity + extra)
        assert self.fast.row_keys(live) == keys_before

    @rule(extra=st.integers(1, 20))
    def grow_begin(self, extra):
        """A growth ahead of need (grow_begin / grow_copy / grow_end) with
        any operations between its steps: the table keeps every row, its id
        and every answer, or gives the growth up when it moved meanwhile."""
        if getattr(self, "growing", None) is None:
            cap = self.fast.capacity
            self.growing = (self.fast, self.fast.grow_begin(cap + extra), cap, cap + extra)

    @rule()
    def grow_copy(self):
        if getattr(self, "growing", None) is not None:
            table, token, _, _ = self.growing
            table.grow_copy(token)

    @rule()
    def grow_end(self):
        if getattr(self, "growing", None) is None:
            return
        table, token, began, capacity = self.growing
        self.growing = None
        live = self.fast.live_rows()
        keys_before = self.fast.row_keys(live)
        if table is not self.fast:  # restored from a snapshot since: the growth is the old object's
            table.grow_end(token)
            return
        grows = table.capacity == began and token[4]  # not grown meanwhile by itself, and copied
        assert table.grow_end(token) == grows
        if grows:
            self.ref.grow(capacity)
        assert self.fast.row_keys(live) == keys_before

    @invariant()
    def same_size_and_counters(self):
        if not hasattr(self, "fast"):
            return
        assert len(self.fast) == len(self.ref)
        assert sorted(map(tuple, [k if isinstance(k, tuple) else (k,) for k in
                                  self.fast.row_keys(self.fast.hidden_rows())])) == \
            sorted(tuple(self.schema.decode_key(k)) if isinstance(self.schema.decode_key(k), tuple)
                   else (self.schema.decode_key(k),) for k in self.ref.hidden)
        a, b = self.fast.stats(), self.ref.stats()
        for k in ("evicted_capacity", "evicted_expired", "stale_on_arrival"):
            assert a[k] == b[k], k
        assert self.fast.capacity == self.ref.capacity


class IntKeyTable(TableMachine):
    schema = Schema([("k", "int64")], COLUMNS)
    key_strategy = INT_KEYS


class CompositeKeyTable(TableMachine):
    schema = Schema([("k", "int64"), ("ks", "string", 8)], COLUMNS)
    key_strategy = st.tuples(st.integers(0, 3), STR_KEYS)


MACHINE_SETTINGS = settings(max_examples=int(os.environ.get("FSTORE_MACHINE_EXAMPLES", "40")), stateful_step_count=25)
TestIntKeyTable = IntKeyTable.TestCase
TestIntKeyTable.settings = MACHINE_SETTINGS
TestCompositeKeyTable = CompositeKeyTable.TestCase
TestCompositeKeyTable.settings = MACHINE_SETTINGS
