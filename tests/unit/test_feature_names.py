"""One output-name rule on every read surface: each requested feature gets a
column of its own (`feature`, or `view__feature` with full_feature_names).
A clash is refused alike by the embedded store, REST, Feast's endpoint, a
worker's shared-memory reader and training sets (422 FeatureNameCollision
over HTTP, saying to pass full_feature_names); the starter repo reads as
shipped."""
import pytest
from falcon import testing

from fsapp import FeatureStore
from fsapp.api import EngineBackend, create_app
from fsapp.errors import FeatureNameCollision
from fsapp.offline.views import ViewDef
from fsapp.registry.catalog import FeatureNameCheck, check_feature_names
from fsapp.registry.scaffold import init_repo
from fsapp.serve.reader import OnlineReader

H = 3_600_000_000
T0 = 1_764_000_000_000_000 // H * H
NOW = T0 + 2 * H
CLASH = ["user_txn:txn_count_1h", "merchant_counts:txn_count_1h"]
# a second view whose feature has the name of one of user_txn's
EXTRA_SQL = """
CREATE FEATURE VIEW merchant_counts AS
SELECT merchant_id, count(*) OVER sliding('1h', '5m') AS txn_count_1h FROM transactions;
CREATE FEATURE SERVICE clashing AS (user_txn:txn_count_1h, merchant_counts:txn_count_1h);
"""
ENTITIES = {"user_id": [1], "merchant_id": ["m1"]}


class View:
    def __init__(self, name, version=None):
        self.name, self.version = name, version


def test_the_rule():
    u, m = View("user_txn", 1), View("merchant_txn", 1)
    check_feature_names([(u, "a"), (m, "b")], False)
    with pytest.raises(FeatureNameCollision, match=r"'a' comes from both user_txn:a and merchant_txn:a; "
                                                   r"pass full_feature_names=True .*\(user_txn__a, merchant_txn__a\)"):
        check_feature_names([(u, "a"), (m, "a")], False)
    check_feature_names([(u, "a"), (m, "a")], True)
    with pytest.raises(FeatureNameCollision, match="requested twice"):
        check_feature_names([(u, "a"), (u, "a")], True)
    with pytest.raises(FeatureNameCollision, match=r"user_txn@v1:a and user_txn@v2:a .* request one version"):
        check_feature_names([(u, "a"), (View("user_txn", 2), "a")], True)
    with pytest.raises(FeatureNameCollision, match="already an entity column; pass full_feature_names"):
        check_feature_names([(u, "user_id")], False, taken=["user_id"])
    # offline views (no version) follow the same rule
    v = ViewDef.plain("p", "src", ["k"], ["x"])
    with pytest.raises(FeatureNameCollision, match="requested twice"):
        check_feature_names([(v, "x"), (v, "x")], False)
    check = FeatureNameCheck([(u, "a"), (m, "a")])
    check(True)
    with pytest.raises(FeatureNameCollision, match="full_feature_names"):
        check(False)


@pytest.fixture
def store(tmp_path):
    init_repo(tmp_path / "repo")
    s = FeatureStore(tmp_path / "repo", fsync="never", clock=lambda: NOW)
    s.apply()
    yield s
    s.close()


def push_one(store):
    store.push("transactions", [{"user_id": 1, "merchant_id": "m1", "amount": 5.0, "currency": "EUR",
                                 "country": "DE", "is_online": True, "ts": T0 + 60_000_000}])


def test_the_starter_service_reads_without_full_names(store):
    push_one(store)
    d = store.get_online_features(feature_service="fraud_v1", entity_rows=[{"user_id": 1, "merchant_id": "m1"}])
    names = d.feature_names
    assert len(names) == len(set(names)) and {"txn_count_1h", "merchant_txn_count_1h", "age"} <= set(names)
    train = store.get_historical_features({"user_id": [1], "merchant_id": ["m1"], "event_timestamp": [T0 + H // 2]},
                                          feature_service="fraud_v1").to_arrow()
    assert train.column("merchant_txn_count_1h").to_pylist() == [1]
    app = testing.TestClient(create_app(EngineBackend(store.engine)))
    res = app.simulate_post("/get-online-features", json={"feature_service": "fraud_v1", "entities": ENTITIES})
    assert res.status_code == 200, res.text
    assert res.json["metadata"]["feature_names"] == ["user_id", "merchant_id"] + names[2:]


@pytest.fixture
def clashing(store):
    (store.repo.root / "more.sql").write_text(EXTRA_SQL)
    store.apply()
    return store


def test_a_clash_is_refused_on_every_surface(clashing):
    store = clashing
    push_one(store)
    with pytest.raises(FeatureNameCollision, match="pass full_feature_names=True"):
        store.get_online_features(features=CLASH, entity_rows=[{"user_id": 1, "merchant_id": "m1"}])
    with pytest.raises(FeatureNameCollision, match="pass full_feature_names=True"):
        store.get_online_features(feature_service="clashing", entity_rows=[{"user_id": 1, "merchant_id": "m1"}])
    with pytest.raises(FeatureNameCollision, match="pass full_feature_names=True"):
        store.get_historical_features({**ENTITIES, "event_timestamp": [NOW]}, features=CLASH)
    full = store.get_online_features(features=CLASH, full_feature_names=True,
                                     entity_rows=[{"user_id": 1, "merchant_id": "m1"}])
    assert full.feature_names[2:] == ["user_txn__txn_count_1h", "merchant_counts__txn_count_1h"]

    app = testing.TestClient(create_app(EngineBackend(store.engine)))
    for path, body in (("/api/v1/features/online", {"features": CLASH}),
                       ("/get-online-features", {"features": CLASH}),
                       ("/get-online-features", {"feature_service": "clashing"}),
                       ("/api/v1/features/online", {"features": CLASH[:1] * 2}),
                       ("/api/v1/features/online", {"features": CLASH, "as_of": NOW})):
        res = app.simulate_post(path, json={**body, "entities": ENTITIES})
        assert res.status_code == 422, (path, body, res.text)
        assert res.json["title"] == "Feature name collision"
        assert "full_feature_names" in res.json["description"] or "requested twice" in res.json["description"]
        ok = app.simulate_post(path, json={**body, "entities": ENTITIES, "full_feature_names": True})
        assert ok.status_code == (422 if body.get("features") == CLASH[:1] * 2 else 200), ok.text
    res = app.simulate_post("/api/v1/features/historical", json={"features": CLASH, "entities": {
        **ENTITIES, "event_timestamp": [NOW]}}, headers={"Accept": "application/vnd.apache.arrow.stream"})
    assert res.status_code == 422 and res.json["title"] == "Feature name collision"

    # a gunicorn worker's reader (shared-memory tables, cached plans)
    reader = OnlineReader(str(store.repo.data_dir / "engine"), str(store.repo.registry_path))
    try:
        with pytest.raises(FeatureNameCollision, match="pass full_feature_names=True"):
            reader.get_online_json(CLASH, None, ENTITIES, now=NOW)
        with pytest.raises(FeatureNameCollision, match="pass full_feature_names=True"):
            reader.get_online_features(None, "clashing", ENTITIES, now=NOW)
        assert b'"merchant_counts__txn_count_1h"' in reader.get_online_json(CLASH, None, ENTITIES, now=NOW,
                                                                            full_feature_names=True)
    finally:
        reader.close()
