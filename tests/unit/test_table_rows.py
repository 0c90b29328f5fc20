"""Row-id operations the engine uses to keep per-key window state beside the
online table: slots_for (lookup-or-insert), put_rows, delete_rows; and how
row reads take their keys."""
import re

import numpy as np
import pytest
from hypothesis import example, given, strategies as st

from fscore.errors import SchemaError
from fscore.schema import Schema
from fscore.table import NOT_FOUND, PRESENT, Table

SCHEMA = Schema([("k", "int64")], [("x", "float64"), ("s", "string", 4)])


def test_slots_for_inserts_missing_keys_once():
    t = Table(SCHEMA, capacity=8)
    rows, created = t.slots_for(np.array([5, 6, 5]), now=100)
    assert created.tolist() == [True, True, False]
    assert rows[0] == rows[2] and rows[0] != rows[1]
    again, created2 = t.slots_for(np.array([6, 5]), now=101)
    assert again.tolist() == [rows[1], rows[0]] and not created2.any()
    r = t.get_batch(np.array([5]), now=100)
    assert r.status.tolist() == [PRESENT] and r.nulls["x"].tolist() == [True]
    assert t.row_keys(rows) == [5, 6, 5]


def test_put_rows_overwrites_whatever_the_timestamps():
    t = Table(SCHEMA, capacity=8)
    rows, _ = t.slots_for(np.array([1, 2]), now=1000)
    t.put_rows(rows, {"x": np.array([1.5, 2.5]), "s": np.array(["a", None], dtype=object)}, np.array([10, 20]))
    r = t.get_batch(np.array([1, 2]), now=1000)
    assert r.values["x"].tolist() == [1.5, 2.5] and r.event_ts.tolist() == [10, 20]
    assert r.values["s"].tolist() == ["a", None]
    t.put_rows(rows[:1], {"x": np.array([9.0])}, np.array([5]))  # older ts still overwrites
    assert t.get(1, now=1000) == (9.0, None)


def test_put_rows_refuses_free_rows():
    t = Table(SCHEMA, capacity=4)
    with pytest.raises(SchemaError, match="slots_for"):
        t.put_rows(np.array([0]), {}, np.array([1]))


def test_delete_rows_frees_the_key():
    t = Table(SCHEMA, capacity=4)
    rows, _ = t.slots_for(np.array([1, 2, 3]), now=0)
    assert t.delete_rows(rows[:2]) == 2 and t.delete_rows(rows[:2]) == 0
    assert t.get_batch(np.array([1, 2, 3]), now=0).status.tolist() == [NOT_FOUND, NOT_FOUND, PRESENT]
    assert len(t) == 1


def test_slots_for_reuses_evicted_rows_and_says_so():
    t = Table(SCHEMA, capacity=2)
    rows, _ = t.slots_for(np.array([1, 2]), now=10)
    t.put_rows(rows, {}, np.array([1, 2]))  # key 1 is now the oldest
    new, created = t.slots_for(np.array([3]), now=11)
    assert created.tolist() == [True] and new[0] == rows[0]
    assert t.get_batch(np.array([1]), now=11).status.tolist() == [NOT_FOUND]


def test_too_many_new_keys_for_the_capacity_is_refused():
    t = Table(SCHEMA, capacity=2)
    with pytest.raises(SchemaError, match="capacity"):
        t.slots_for(np.array([1, 2, 3]), now=0)


@given(st.lists(st.integers(-5, 30), max_size=40), st.integers(1, 64))
@example([0, 0, 1, -1, 2, -2, 0, 0, -1, 1, -2, 2], 4)  # eviction once took a row the same batch had returned
def test_live_keys_always_have_distinct_rows(keys, capacity):
    t = Table(SCHEMA, capacity=capacity)
    seen = {}
    for chunk in [keys[i:i + max(1, capacity // 2)] for i in range(0, len(keys), max(1, capacity // 2))]:
        rows, created = t.slots_for(np.array(chunk, dtype=np.int64), now=len(seen))
        for k, r in zip(chunk, rows.tolist()):
            seen[k] = r
    live = {k: r for k, r in seen.items() if t.get(k, now=10**9) is not None}
    assert len(set(live.values())) == len(live)
    assert t.row_keys(list(live.values())) == list(live.keys())


@pytest.mark.parametrize("keys", [[1, 1.5], [1, "x"], [2**63], [None], [True]])
def test_a_list_of_keys_that_are_not_int64_is_refused_like_an_array(keys):
    """get_rows / get_batch / table_results read a list of plain ints
    without an array; anything else in the list takes the array path and
    gets its error."""
    from fscore import jsonenc
    from fscore.errors import KeyEncodingError
    t = Table(SCHEMA, capacity=8)
    specs = jsonenc.column_specs(t.column_layout(), ["x"])
    with pytest.raises(KeyEncodingError) as as_array:
        t.get_rows(np.array(keys), 0)
    for read in (lambda: t.get_rows(keys, 0), lambda: t.get_batch(keys, 0),
                 lambda: jsonenc.table_results(t, keys, 0, specs)):
        with pytest.raises(KeyEncodingError, match=str(as_array.value).replace("(", r"\(")):
            read()
    assert t.get_rows([2**63 - 1, -2**63], 0)[0].tolist() == [NOT_FOUND, NOT_FOUND]
