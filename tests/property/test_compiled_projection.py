"""A feature view's SELECT items and row filter compiled to numpy
(`runtime.CompiledProjection`) against the DuckDB query they replace
(`runtime.project_views`): on random batches — nulls, NaN and infinities,
integers at their type's edges, empty and non-ASCII text — the compiled
projection gives DuckDB's rows and values, and it declines (None) exactly the
batches on which DuckDB raises, so the engine refuses those with DuckDB's
message. The engine checks each compiled projection against DuckDB on its
first batches and drops it if they differ."""
from __future__ import annotations

import logging
import math

import duckdb
import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fsapp.engine import Engine, runtime
from fsapp.engine.runtime import ROW, project_views
from fsapp.registry.repo import Repo

DEFS = """
CREATE ENTITY ent (k BIGINT);
CREATE STREAM ev (k BIGINT, x DOUBLE, n INTEGER, b BOOLEAN, s VARCHAR, ts TIMESTAMP)
    WITH (timestamp = 'ts', allowed_lateness = '1h');
CREATE FEATURE VIEW starter_like AS
SELECT k, count(*) OVER lifetime() AS c, sum(b::INTEGER) OVER lifetime() AS online,
       sum(CASE WHEN s <> 'US' THEN 1 ELSE 0 END) OVER lifetime() AS foreign_n, max(x) OVER lifetime() AS mx
FROM ev WHERE x > 0;
CREATE FEATURE VIEW arith AS
SELECT k, sum(n + 1) OVER lifetime() AS n1, sum(n * 1000) OVER lifetime() AS n1000,
       sum(x / 2) OVER lifetime() AS half, max(coalesce(x, -1.0)) OVER lifetime() AS cx,
       count(CASE WHEN b AND n > 10 THEN s END) OVER lifetime() AS picked
FROM ev WHERE s = 'US' OR b;
CREATE FEATURE VIEW plain_expr AS
SELECT k, x * 2 AS x2, n // 3 AS third, NOT b AS nb, s IS NULL AS no_s, ts AS t, s FROM ev WHERE n IS NOT NULL;
"""

INT32 = 2**31 - 1


def _engine(root) -> Engine:
    (root / "fstore.yaml").write_text("project: p\n")
    (root / "defs.sql").write_text(DEFS)
    repo = Repo(root)
    repo.apply()
    return Engine(str(repo.data_dir / "engine"), str(repo.registry_path), fsync="never")


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    eng = _engine(tmp_path_factory.mktemp("compiled"))
    yield eng
    eng.close()


def _batch(eng, rows: dict):
    cur = eng.cursor()
    table, _ = eng.normalisers["ev"].normalise(rows, cur)
    return cur, table.append_column(ROW, pa.array(np.arange(table.num_rows, dtype=np.int64)))


def _values(col) -> list:
    return [("nan" if isinstance(v, float) and math.isnan(v) else v) for v in col.to_pylist()]


floats = st.one_of(st.floats(allow_nan=True, allow_infinity=False), st.sampled_from([0.0, -0.0, 1.5, -3.0]),
                   st.none())
ints = st.one_of(st.integers(-INT32 - 1, INT32), st.sampled_from([INT32, -INT32 - 1, 0, 11, 2**21]), st.none())
texts = st.one_of(st.sampled_from(["US", "DE", "", "us", "é"]), st.text(max_size=4), st.none())
# infinities are refused by the stream before any projection (ingest._finite_or_null)
events = st.lists(st.tuples(st.integers(0, 5), floats, ints, st.one_of(st.booleans(), st.none()), texts),
                  min_size=1, max_size=30)


def test_every_view_here_compiles(engine):
    assert all(rt.compiled is not None for rt in engine.runtimes.values())


@settings(deadline=None)
@given(events=events)
def test_a_compiled_projection_equals_duckdbs_or_declines_where_duckdb_raises(engine, events):
    rows = {"k": [e[0] for e in events], "x": [e[1] for e in events], "n": [e[2] for e in events],
            "b": [e[3] for e in events], "s": [e[4] for e in events],
            "ts": [1_764_000_000_000_000 + i for i in range(len(events))]}
    cur, batch = _batch(engine, rows)
    for rt in engine.runtimes.values():
        ours = rt.compiled(batch)
        cur.register("__batch", batch)
        try:
            theirs = project_views(cur, [rt])[rt]
        except duckdb.Error:
            assert ours is None, f"{rt.name}: DuckDB raises on this batch, the compiled projection does not"
            continue
        finally:
            cur.unregister("__batch")
        assert ours is not None, f"{rt.name}: the compiled projection declines a batch DuckDB takes"
        assert ours.column_names == theirs.column_names
        for name, a, b in zip(ours.column_names, ours.columns, theirs.columns):
            assert _values(a.cast(b.type)) == _values(b), (rt.name, name)


def test_the_engine_drops_a_compiled_projection_that_disagrees_with_duckdb(tmp_path, monkeypatch, caplog):
    """The first SHADOW_BATCHES batches are projected both ways; a difference
    is logged and DuckDB projects from then on, so the values stay right."""
    eng = _engine(tmp_path)
    rt = next(r for r in eng.runtimes.values() if r.name == "starter_like")
    good = rt.compiled

    def wrong(batch):  # a compiled filter that keeps every row
        out = good(batch)
        return None if out is None else pa.table({c: batch.column(c) if c in batch.column_names else
                                                  out.column(c).take([0] * batch.num_rows) for c in out.column_names})
    rt.compiled = wrong
    now = 1_764_000_100_000_000
    rows = {"k": [1, 1], "x": [-5.0, 2.0], "n": [1, 2], "b": [True, False], "s": ["US", "DE"],
            "ts": [now - 2, now - 1]}
    with caplog.at_level(logging.ERROR, logger="fsapp.engine"):
        eng.push("ev", rows, now=now)
    assert rt.compiled is None and "disagrees with DuckDB" in caplog.text
    out = eng.get_online_features(["starter_like:c", "starter_like:mx"], entities={"k": [1]}, now=now)
    assert [r["values"][0] for r in out["results"][1:]] == [1, 2.0]  # the x = -5 row filtered out
    eng.close()


def test_after_its_checked_batches_a_compiled_projection_runs_without_duckdb(tmp_path, monkeypatch):
    eng = _engine(tmp_path)
    calls = []
    real = runtime.project_views
    monkeypatch.setattr("fsapp.engine.engine.project_views", lambda cur, rts: calls.append(len(rts)) or real(cur, rts))
    now = 1_764_000_100_000_000
    for i in range(runtime.SHADOW_BATCHES + 3):
        eng.push("ev", {"k": [i], "x": [1.0], "n": [i], "b": [True], "s": ["US"], "ts": [now - 10 + i]}, now=now)
    assert len(calls) == runtime.SHADOW_BATCHES  # then none
    # a batch the compiled projection declines (an INTEGER overflow) goes to DuckDB, which refuses it
    with pytest.raises(Exception, match="(?i)overflow|out of range"):
        eng.push("ev", {"k": [1], "x": [1.0], "n": [INT32], "b": [True], "s": ["US"], "ts": [now - 1]}, now=now)
    eng.close()


def test_a_compiled_projection_that_fails_leaves_the_batch_to_duckdb(tmp_path, caplog):
    """A bug in a compiled projection (an exception) must not refuse a batch
    DuckDB takes (nor answer HTTP 500): logged, and DuckDB projects the view."""
    eng = _engine(tmp_path)
    rt = next(r for r in eng.runtimes.values() if r.name == "starter_like")

    def broken(batch):
        raise TypeError("a bug")
    rt.compiled = broken
    now = 1_764_000_100_000_000
    with caplog.at_level(logging.ERROR, logger="fsapp.engine"):
        res = eng.push("ev", {"k": [4], "x": [3.0], "n": [1], "b": [True], "s": ["DE"], "ts": [now - 1]}, now=now)
    assert res.accepted == 1 and rt.compiled is None and "compiled SELECT failed" in caplog.text
    out = eng.get_online_features(["starter_like:foreign_n"], entities={"k": [4]}, now=now)
    assert out["results"][1]["values"] == [1]
    eng.close()
