"""The push path's two query-free shortcuts give what the DuckDB queries give:
a batch already in its declared types (BatchNormaliser._as_declared) and a
view whose projection is bare columns (FeatureViewInfo.bare_projection)."""
import duckdb
import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings, strategies as st

from fsapp.engine import Engine
from fsapp.engine.errors import BatchError
from fsapp.engine.ingest import BatchNormaliser
from fsapp.engine.runtime import ROW, unique_ints
from fsapp.registry.catalog import Registry
from fsapp.registry.repo import Repo
from fsapp.registry.scaffold import init_repo

T0 = 1_764_000_000_000_000
BARE = """
CREATE ENTITY user (user_id BIGINT);
CREATE STREAM s (user_id BIGINT, amount DOUBLE, note VARCHAR, ok BOOLEAN, n BIGINT, ts TIMESTAMP)
    WITH (timestamp = 'ts');
CREATE FEATURE VIEW plain AS SELECT user_id, "amount" AS amount, AMOUNT AS again, note, ok, n FROM s;
CREATE FEATURE VIEW computed AS SELECT user_id, amount * 2 AS twice FROM s;
CREATE FEATURE VIEW filtered AS SELECT user_id, n FROM s WHERE ok;
CREATE FEATURE VIEW counted AS SELECT user_id, count(*) OVER sliding('1h', '5m') AS c,
    sum(amount) OVER tumbling('1d') AS total FROM s;
"""


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    root = tmp_path_factory.mktemp("fast") / "repo"
    root.mkdir()
    (root / "fstore.yaml").write_text("project: fast\nregistry: data/registry.db\ndata_dir: data\n")
    (root / "defs.sql").write_text(BARE)
    r = Repo(root)
    r.apply()
    return r


def test_bare_projection_is_found_only_for_bare_columns(repo):
    reg = Registry(repo.registry_path)
    cols = ["user_id", "amount", "note", "ok", "n", "ts"]
    plain = reg.feature_view("plain").bare_projection(cols)
    assert plain == [("user_id", "user_id"), ("ts", "ts"), ("amount", "amount"), ("amount", "again"),
                     ("note", "note"), ("ok", "ok"), ("n", "n")]
    assert reg.feature_view("computed").bare_projection(cols) is None
    assert reg.feature_view("filtered").bare_projection(cols) is None
    assert reg.feature_view("counted").bare_projection(cols) is not None
    reg.close()


rows = st.lists(st.fixed_dictionaries(
    {"user_id": st.integers(1, 5), "ts": st.integers(T0, T0 + 10**9)},
    optional={"amount": st.one_of(st.none(), st.integers(-2**60, 2**60), st.floats(allow_nan=True, width=64)),
              "note": st.one_of(st.none(), st.text(max_size=5)), "ok": st.one_of(st.none(), st.booleans()),
              "n": st.one_of(st.none(), st.integers(-2**63, 2**63 - 1))}), min_size=1, max_size=6)


@settings(max_examples=60, deadline=None)
@given(rows)
def test_normalise_without_the_query_equals_the_query(batch):
    from fsapp.registry.model import Column, Stream
    stream = Stream(name="s", columns=[Column("user_id", "BIGINT"), Column("amount", "DOUBLE"),
                                       Column("note", "VARCHAR"), Column("ok", "BOOLEAN"), Column("n", "BIGINT"),
                                       Column("ts", "TIMESTAMP")], timestamp="ts")
    con = duckdb.connect()
    learnt = BatchNormaliser(stream, con)
    learnt.normalise([{"user_id": 1, "amount": 1.5, "ts": T0}])  # learns the cast's schema
    fresh = BatchNormaliser(stream, con)
    try:
        want, want_ts = fresh.normalise(batch)
    except BatchError:
        with pytest.raises(BatchError):
            learnt.normalise(batch)
        return
    got, got_ts = learnt.normalise(batch)
    assert got.schema == want.schema
    assert got.to_pylist() == want.to_pylist() or _same_with_nan(got, want)
    assert (got_ts == want_ts).all()


def _same_with_nan(a: pa.Table, b: pa.Table) -> bool:
    def norm(v):
        return "nan" if isinstance(v, float) and v != v else v
    return [{k: norm(v) for k, v in r.items()} for r in a.to_pylist()] == \
        [{k: norm(v) for k, v in r.items()} for r in b.to_pylist()]


def test_views_read_the_same_with_and_without_the_query(repo, tmp_path):
    """Every view of the repo, pushed through the engine (shortcuts on), reads
    what the DuckDB projections give for the same batch."""
    eng = Engine(str(tmp_path / "engine"), str(repo.registry_path), fsync="never", clock=lambda: T0 + 10**9)
    try:
        batch = [{"user_id": u, "amount": float(u) * 1.5 if u % 2 else u, "note": f"n{u}", "ok": u % 3 == 0,
                  "n": u * 7, "ts": T0 + u} for u in range(1, 9)]
        eng.push("s", batch[:1])  # learns the cast's schema
        eng.push("s", batch[1:])
        table, _ = eng.normalisers["s"].normalise(batch)
        table = table.append_column(ROW, pa.array(range(table.num_rows), pa.int64()))
        eng.con.register("__batch", table)
        try:
            for rt in eng.runtimes.values():
                want = eng.con.sql(rt.sql).to_arrow_table()
                got = rt.project(eng.con, table)
                assert got.schema == want.schema, rt.name
                assert got.to_pylist() == want.to_pylist(), rt.name
        finally:
            eng.con.unregister("__batch")
        out = eng.get_online_features(["plain:amount", "plain:again", "plain:note", "plain:ok", "plain:n"],
                                      entities={"user_id": [3, 4]})
        assert out["results"][1]["values"] == [4.5, 4.0] and out["results"][3]["values"] == ["n3", "n4"]
        assert np.array_equal(out["results"][5]["values"], [21, 28])
    finally:
        eng.close()


@settings(deadline=None)
@given(parts=st.lists(st.lists(st.integers(-2**40, 2**40) | st.integers(0, 20), max_size=30), min_size=1, max_size=3))
def test_unique_ints_is_numpys_union(parts):
    """The sort-based distinct rows the push path uses in place of np.unique /
    np.union1d (numpy 2 hashes integers, ~14x slower for a 5,000-row batch)."""
    arrays = [np.asarray(p, dtype=np.int64) for p in parts]
    want = np.unique(np.concatenate(arrays))
    got = unique_ints(*arrays)
    assert got.dtype == want.dtype and got.tolist() == want.tolist()
