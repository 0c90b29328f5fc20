"""What the web UI needs from the app, through falcon.testing: the page and
its assets with their security and caching headers, /api/v1/whoami (a key's
scopes), /api/v1/stats (the panels' numbers, equal to /metrics'), and each
registry entry's SQL. The pages themselves run in a real browser in
tests/integration/test_ui.py."""
import pytest
from falcon import testing
from prometheus_client.parser import text_string_to_metric_families

from fsapp.api import EngineBackend, create_app
from fsapp.api.stats import quantile, summarize
from fsapp.engine import Engine
from fsapp.registry.repo import Repo
from fsapp.registry.scaffold import init_repo
from fsapp.ui import CSP, STATIC_DIR

H = 3_600_000_000
T0 = 1_764_000_000_000_000 // H * H
NOW = T0 + 2 * H


@pytest.fixture
def engine(tmp_path):
    init_repo(tmp_path / "repo")
    repo = Repo(tmp_path / "repo")
    repo.apply()
    eng = Engine(str(repo.data_dir / "engine"), str(repo.registry_path), fsync="never", clock=lambda: NOW)
    yield eng
    eng.close()


def txn(user, ts_us, amount=5.0):
    return {"user_id": user, "merchant_id": "m1", "amount": amount, "currency": "EUR", "country": "DE",
            "is_online": True, "ts": ts_us}


def test_the_page_and_its_assets_allow_this_origin_only_and_cache_by_content():
    api = testing.TestClient(create_app(None))
    page = api.simulate_get("/ui")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert page.headers["content-security-policy"] == CSP and "default-src 'none'" in CSP
    assert page.headers["cache-control"] == "no-cache"
    assert api.simulate_get("/ui", headers={"If-None-Match": page.headers["etag"]}).status_code == 304
    assert "{{version}}" not in page.text
    scripts = [line.split('src="')[1].split('"')[0] for line in page.text.splitlines() if "<script" in line]
    assert scripts and all(s.startswith("/ui/static/") and "?v=" in s for s in scripts)
    for url in scripts:
        path, version = url.split("?v=")
        asset = api.simulate_get(path, params={"v": version})
        assert asset.status_code == 200 and asset.headers["content-type"].startswith("text/javascript")
        assert "immutable" in asset.headers["cache-control"]
        assert asset.headers["content-security-policy"] == CSP
        assert api.simulate_get(path).headers["cache-control"] == "no-cache"  # no digest: revalidate
    for path in STATIC_DIR.iterdir():  # no file names another origin (no CDN, no font service)
        text = path.read_text().replace("http://www.w3.org/2000/svg", "")  # the SVG namespace: a name, not a URL
        assert "http://" not in text and "https://" not in text and "url(//" not in text, path.name
    assert api.simulate_get("/ui/static/../__init__.py").status_code == 404
    assert api.simulate_get("/ui/static/index.html").status_code == 404  # the page lives at /ui only
    assert api.simulate_get("/ui/").headers["location"].endswith("/ui")
    assert api.simulate_get("/").status_code == 302 and api.simulate_get("/").headers["location"].endswith("/ui")
    assert testing.TestClient(create_app(None, ui=False)).simulate_get("/ui").status_code == 404


def test_the_ui_needs_no_key_but_its_data_does(engine):
    api = testing.TestClient(create_app(EngineBackend(engine), api_keys={"r": "read", "w": "write", "a": "admin"}))
    assert api.simulate_get("/ui").status_code == 200
    assert api.simulate_get("/api/v1/stats").status_code == 401
    bearer = lambda t: {"Authorization": f"Bearer {t}"}
    assert api.simulate_get("/api/v1/whoami").json == {"keys_required": True, "scopes": []}
    assert api.simulate_get("/api/v1/whoami", headers=bearer("r")).json == {"keys_required": True, "scopes": ["read"]}
    assert api.simulate_get("/api/v1/whoami", headers=bearer("w")).json["scopes"] == ["write"]
    assert api.simulate_get("/api/v1/whoami", headers=bearer("a")).json["scopes"] == ["read", "write"]
    assert api.simulate_get("/api/v1/whoami", headers=bearer("nope")).status_code == 401
    assert api.simulate_get("/api/v1/stats", headers=bearer("w")).status_code == 403
    assert api.simulate_get("/api/v1/stats", headers=bearer("r")).status_code == 200
    open_api = testing.TestClient(create_app(EngineBackend(engine)))
    assert open_api.simulate_get("/api/v1/whoami").json == {"keys_required": False, "scopes": ["read", "write"]}


def _samples(text):
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def test_stats_are_the_metrics_counters_summed_up(engine):
    api = testing.TestClient(create_app(EngineBackend(engine)))
    empty = api.simulate_get("/api/v1/stats").json
    assert empty["streams"]["transactions"] == {"pushed": 0, "kafka": 0, "late": 0, "topic": "card-transactions",
                                                "freshness_s": None}
    assert empty["views"]["user_txn"]["freshness_s"] is None and empty["serving"]["p50_ms"] is None
    rows = [txn(1, T0 + 60_000_000), txn(2, NOW - 30_000_000), txn(3, T0 - 10 * H)]  # the last one is late
    pushed = api.simulate_post("/api/v1/push", json={"stream": "transactions", "rows": rows}).json
    assert pushed["late"] == 1
    for _ in range(5):
        api.simulate_post("/api/v1/features/online", json={"features": ["user_txn:txn_count_1h"],
                                                            "entities": {"user_id": [1]}})
    stats = api.simulate_get("/api/v1/stats").json
    metrics = _samples(api.simulate_get("/metrics").text)
    s = stats["streams"]["transactions"]
    assert s["pushed"] == metrics[("fstore_ingest_rows_total", (("stream", "transactions"),))] == pushed["accepted"]
    assert s["late"] == metrics[("fstore_late_events_total", (("stream", "transactions"),))] == 1
    assert s["freshness_s"] == pytest.approx(30.0)  # NOW minus the newest event time
    assert stats["views"]["user_txn"]["freshness_s"] == pytest.approx(30.0)  # its stream's
    assert stats["views"]["user_profile"]["over_stream"] is False  # a batch source: no stream freshness
    assert stats["late_events"] == 1 and stats["dead_letters"] == {"total": 0, "by_topic": {}}
    assert stats["serving"]["requests"] == 5
    assert 0 < stats["serving"]["p50_ms"] <= stats["serving"]["p95_ms"] <= stats["serving"]["p99_ms"]
    assert stats["kafka"] == {"mode": None, "lag": {}, "lag_total": None}  # a topic, but no Kafka configured
    assert stats["ready"] == {"ok": True, "reason": ""}


def test_quantile_interpolates_within_a_bucket_like_prometheus():
    buckets = [(0.001, 0.0), (0.002, 10.0), (0.005, 20.0), (float("inf"), 20.0)]
    assert quantile(0.5, buckets) == pytest.approx(0.002)
    assert quantile(0.25, buckets) == pytest.approx(0.0015)
    assert quantile(0.75, buckets) == pytest.approx(0.0035)
    assert quantile(0.5, [(0.001, 0.0), (float("inf"), 0.0)]) is None
    assert quantile(0.99, [(0.001, 0.0), (float("inf"), 4.0)]) == 0.001  # all above the last bound


def test_registry_entries_carry_the_sql_that_recreates_them(engine):
    api = testing.TestClient(create_app(EngineBackend(engine)))
    view = api.simulate_get("/api/v1/registry/feature_view/user_txn", params={"version": "1"}).json
    assert view["sql"].startswith("CREATE FEATURE VIEW user_txn") and view["sql"].endswith(";")
    assert "OVER sliding('1h', '5m') AS txn_count_1h" in view["sql"]
    for kind in ("entities", "streams", "sources", "feature_views", "on_demand_views", "feature_services"):
        items = api.simulate_get(f"/api/v1/registry/{kind}").json["items"]
        assert items and all(e["sql"].rstrip(";").strip() for e in items), kind


def test_stats_map_kafka_counters_to_their_streams():
    text = """# TYPE fstore_kafka_ingested_rows_total counter
fstore_kafka_ingested_rows_total{topic="card-tx"} 40.0
# TYPE fstore_kafka_dead_letters_total counter
fstore_kafka_dead_letters_total{kind="decode",topic="card-tx"} 2.0
fstore_kafka_dead_letters_total{kind="schema",topic="card-tx"} 1.0
# TYPE fstore_kafka_lag_messages gauge
fstore_kafka_lag_messages{partition="0",topic="card-tx"} 5.0
fstore_kafka_lag_messages{partition="1",topic="card-tx"} 7.0
# TYPE fstore_freshness_lag_seconds gauge
fstore_freshness_lag_seconds{stream="tx"} 1.5
"""
    streams = [{"name": "tx", "definition": {"topic": "card-tx"}}, {"name": "clicks", "definition": {"topic": None}}]
    views = [{"name": "v", "version": 3, "definition": {"source": "tx"}}]
    out = summarize(text, streams, views, {"late_events": 4, "applied_lsn": 9}, {"mode": "group"})
    assert out["streams"]["tx"] == {"pushed": 0, "kafka": 40, "late": 0, "topic": "card-tx", "freshness_s": 1.5}
    assert out["streams"]["clicks"]["kafka"] == 0 and out["streams"]["clicks"]["freshness_s"] is None
    assert out["views"]["v"] == {"version": 3, "source": "tx", "over_stream": True, "freshness_s": 1.5, "keys": None}
    assert out["dead_letters"] == {"total": 3, "by_topic": {"card-tx": 3}}
    assert out["kafka"] == {"mode": "group", "lag": {"card-tx/0": 5, "card-tx/1": 7}, "lag_total": 12}
    assert out["late_events"] == 4 and out["applied_lsn"] == 9
