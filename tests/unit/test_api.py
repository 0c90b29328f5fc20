"""The REST API over a real engine (temp starter repo, fake clock), through
falcon.testing.TestClient: reads, writes, formats, auth, limits and the
error statuses."""
import io
import re

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from falcon import testing

from fscore.errors import WalFsyncError
from fscore.wal import Wal

from fsapp.api import EngineBackend, create_app
from fsapp.api.metrics import MetricsRegistry
from fsapp.engine import Engine
from fsapp.registry.errors import RegistryError
from fsapp.registry.repo import Repo
from fsapp.registry.scaffold import init_repo

H = 3_600_000_000
T0 = 1_764_000_000_000_000 // H * H
NOW = T0 + 2 * H
ARROW = "application/vnd.apache.arrow.stream"


def txn(user, ts_us, amount=5.0, merchant="m1"):
    return {"user_id": user, "merchant_id": merchant, "amount": amount, "currency": "EUR", "country": "DE",
            "is_online": True, "ts": ts_us}


@pytest.fixture
def repo(tmp_path):
    init_repo(tmp_path / "repo")
    r = Repo(tmp_path / "repo")
    r.apply()
    return r


@pytest.fixture
def engine(repo):
    eng = Engine(str(repo.data_dir / "engine"), str(repo.registry_path), fsync="never", clock=lambda: NOW)
    yield eng
    eng.close()


def client(engine, **kw):
    return testing.TestClient(create_app(EngineBackend(engine), **kw))


@pytest.fixture
def api(engine):
    return client(engine)


def push(api, rows, stream="transactions"):
    res = api.simulate_post("/api/v1/push", json={"stream": stream, "rows": rows})
    assert res.status_code == 200, res.text
    return res.json


def assert_error(res, status):
    assert res.status_code == status, res.text
    body = res.json
    assert set(body) == {"title", "description"} and body["description"], body
    return body


# ---- reads and writes

def test_push_then_read_back_column_major_with_statuses(api):
    out = push(api, [txn(1, T0 + 60_000_000), txn(1, T0 + 120_000_000, amount=7.0), txn(2, T0 + H)])
    assert out == {"accepted": 3, "late": 0, "lsn": out["lsn"]} and out["lsn"] >= 1
    req = {"features": ["user_txn:txn_count_1h", "user_txn:amount_stddev_7d", "user_txn:last_5_amounts"],
           "entities": {"user_id": [1, 2, 99]}}
    res = api.simulate_post("/api/v1/features/online", json=req)
    assert res.status_code == 200, res.text
    body = res.json
    assert body["metadata"]["feature_names"] == ["user_id", "txn_count_1h", "amount_stddev_7d", "last_5_amounts"]
    keys, count, stddev, last5 = body["results"]
    assert keys["values"] == [1, 2, 99]
    assert count["statuses"] == ["PRESENT", "PRESENT", "NOT_FOUND"]
    # as of NOW = T0+2h the closed 1h window [T0+1h, T0+2h) holds only user 2's event
    assert count["values"][:2] == [0, 1]
    # one event: the sample stddev is stored as null
    assert stddev["statuses"][1] == "NULL_VALUE" and stddev["values"][1] is None
    assert last5["values"][0][:2] == [7.0, 5.0]  # most recent first
    assert all(len(r["event_timestamps"]) == 3 for r in body["results"])
    # Feast's endpoint: same request shape, same answer; full names on request
    feast = api.simulate_post("/get-online-features", json={**req, "full_feature_names": True,
                                                           "allow_registry_cache": True})
    assert feast.status_code == 200
    assert feast.json["metadata"]["feature_names"][1] == "user_txn__txn_count_1h"
    assert feast.json["results"] == body["results"]


def test_as_of_reads_the_served_value_at_that_time(api):
    push(api, [txn(1, T0 + 60_000_000)])
    req = {"features": ["user_txn:txn_count_1h"], "entities": {"user_id": [1]}}
    for as_of in ("2025-11-24T18:00:00Z", (T0 + 2 * H) // 1_000_000, T0 + 2 * H):
        res = api.simulate_post("/api/v1/features/online", json={**req, "as_of": as_of})
        assert res.status_code == 200, res.text


def test_request_times_take_now_and_relative_forms_as_the_cli_does(api):
    # as_of / start / end answered 422 to 'now-2h', which the CLI and the SDK take
    push(api, [txn(1, T0 + 60_000_000)])
    req = {"features": ["user_txn:txn_count_1h"], "entities": {"user_id": [1]}}
    for as_of in ("now", "now-2h", "NOW-2H", "-1d", "now - 30 m"):
        res = api.simulate_post("/api/v1/features/online", json={**req, "as_of": as_of})
        assert res.status_code == 200, (as_of, res.text)
    res = api.simulate_post("/api/v1/materialize", json={"start": "now-1000d", "end": "now", "views": ["user_txn"]})
    assert res.status_code == 200, res.text
    for as_of in ("now-99999999d", "now+" + "9" * 400 + "d"):
        res = api.simulate_post("/api/v1/features/online", json={**req, "as_of": as_of})
        assert res.status_code == 422 and "outside years 0001..9999" in res.json["description"], res.text
    res = api.simulate_post("/api/v1/features/online", json={**req, "as_of": "yesterday"})
    assert res.status_code == 422 and "now-2h" in res.json["description"]


def test_feast_push_columns_and_arrow_push_reach_the_same_stream(api):
    df = {k: [v] for k, v in txn(3, T0 + H + 1).items()}
    res = api.simulate_post("/push", json={"push_source_name": "transactions", "df": df, "to": "online"})
    assert res.status_code == 200 and res.json["accepted"] == 1
    res = api.simulate_post("/api/v1/push", json={"stream": "transactions", "columns": df})
    assert res.status_code == 200 and res.json["accepted"] == 1
    sink = io.BytesIO()
    table = pa.table(df)
    with pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table)
    res = api.simulate_post("/api/v1/push", params={"stream": "transactions"}, body=sink.getvalue(),
                            headers={"Content-Type": ARROW})
    assert res.status_code == 200 and res.json["accepted"] == 1
    read = api.simulate_post("/get-online-features", json={"features": ["user_txn:txn_count_1h"],
                                                           "entities": {"user_id": [3]}})
    assert read.json["results"][1]["values"] == [3]
    assert_error(api.simulate_post("/push", json={"push_source_name": "transactions", "df": df, "to": "offline"}),
                 422)


def test_historical_in_json_arrow_and_parquet_agree(api):
    push(api, [txn(1, T0 + 60_000_000), txn(1, T0 + 120_000_000), txn(2, T0 + H)])
    req = {"features": ["user_txn:txn_count_1h", "user_txn:amount_24h"],
           "entities": {"user_id": [1, 2, 1], "event_timestamp": ["2025-11-24T17:00:00Z", T0 + 2 * H, T0]}}
    res = api.simulate_post("/api/v1/features/historical", json=req)
    assert res.status_code == 200, res.text
    cols = res.json["columns"]
    assert res.json["num_rows"] == 3 and cols["txn_count_1h"] == [2, 1, 0]
    res = api.simulate_post("/api/v1/features/historical", json=req, headers={"Accept": ARROW})
    assert res.headers["content-type"] == ARROW
    arrow = pa.ipc.open_stream(res.content).read_all()
    res = api.simulate_post("/api/v1/features/historical", json=req, headers={"Accept": "application/x-parquet"})
    assert res.headers["content-type"] == "application/x-parquet"
    parquet = pq.read_table(io.BytesIO(res.content))
    assert arrow.column("txn_count_1h").to_pylist() == parquet.column("txn_count_1h").to_pylist() == [2, 1, 0]
    assert arrow.column("amount_24h").to_pylist() == cols["amount_24h"]
    assert_error(api.simulate_post("/api/v1/features/historical", json=req, headers={"Accept": "image/png"}), 406)
    bad_key = {**req, "entities": {"user_id": ["x"], "event_timestamp": [T0]}}
    assert "user_id" in assert_error(api.simulate_post("/api/v1/features/historical", json=bad_key), 422)["description"]


def test_json_results_over_the_row_limit_ask_for_arrow(engine):
    api = client(engine, json_max_rows=2)
    push(api, [txn(1, T0)])
    req = {"features": ["user_txn:txn_count_1h"], "entities": {"user_id": [1, 2, 3], "event_timestamp": [T0] * 3}}
    assert "Accept" in assert_error(api.simulate_post("/api/v1/features/historical", json=req), 406)["description"]
    assert api.simulate_post("/api/v1/features/historical", json=req, headers={"Accept": ARROW}).status_code == 200


def test_materialize_writes_the_online_tables(api, engine):
    push(api, [txn(5, T0 + 60_000_000)])
    res = api.simulate_post("/api/v1/materialize", json={"start": T0, "end": T0 + H, "views": ["user_txn"]})
    assert res.status_code == 200, res.text
    assert res.json["views"] == {"user_txn": 1} and engine.checkpoint_lsn == engine.applied_lsn
    assert_error(api.simulate_post("/api/v1/materialize", json={"end": T0, "views": ["nope"]}), 404)
    assert_error(api.simulate_post("/api/v1/materialize", json={"start": T0, "end": T0}), 422)


def test_registry_and_lineage_reads(api):
    res = api.simulate_get("/api/v1/registry/feature_views")
    assert res.status_code == 200
    assert [e["name"] for e in res.json["items"]] == ["merchant_txn", "user_profile", "user_txn"]
    res = api.simulate_get("/api/v1/registry/feature-view/user_txn", params={"version": "1"})
    assert res.status_code == 200 and res.json["version"] == 1 and res.json["kind"] == "feature_view"
    assert api.simulate_get("/api/v1/registry/stream/transactions").json["name"] == "transactions"
    assert_error(api.simulate_get("/api/v1/registry/stream/user_txn"), 404)
    assert_error(api.simulate_get("/api/v1/registry/gadgets"), 404)
    assert_error(api.simulate_get("/api/v1/registry/feature_view/user_txn", params={"version": "9"}), 404)
    assert_error(api.simulate_get("/api/v1/registry/feature_view/user_txn", params={"version": "x"}), 400)
    res = api.simulate_get("/api/v1/lineage/user_txn:txn_count_1h")
    assert res.status_code == 200 and res.json["root"] == "feature:user_txn@v1:txn_count_1h"
    assert any(n["name"] == "transactions" and n["upstream"] for n in res.json["nodes"])
    assert_error(api.simulate_get("/api/v1/lineage/nothing"), 404)


# ---- security and limits

def test_api_keys_and_scopes(engine):
    api = client(engine, api_keys={"r": "read", "w": {"write"}, "a": "admin"})
    read = {"features": ["user_txn:txn_count_1h"], "entities": {"user_id": [1]}}
    write = {"stream": "transactions", "rows": [txn(1, T0)]}
    bearer = lambda t: {"Authorization": f"Bearer {t}"}
    res = assert_error(api.simulate_post("/api/v1/features/online", json=read), 401)
    assert "Bearer" in res["description"]
    assert_error(api.simulate_post("/api/v1/features/online", json=read, headers=bearer("nope")), 401)
    assert_error(api.simulate_post("/api/v1/features/online", json=read, headers={"Authorization": "Basic r"}), 401)
    assert api.simulate_post("/api/v1/features/online", json=read, headers=bearer("r")).status_code == 200
    assert_error(api.simulate_post("/api/v1/push", json=write, headers=bearer("r")), 403)
    assert_error(api.simulate_post("/api/v1/materialize", json={"end": T0}, headers=bearer("r")), 403)
    assert_error(api.simulate_get("/api/v1/registry/stream", headers=bearer("w")), 403)
    assert api.simulate_post("/api/v1/push", json=write, headers=bearer("w")).status_code == 200
    assert api.simulate_post("/push", json={"push_source_name": "transactions",
                                            "df": {k: [v] for k, v in txn(1, T0).items()}},
                             headers=bearer("a")).status_code == 200
    assert api.simulate_get("/api/v1/registry/stream", headers=bearer("a")).status_code == 200
    for open_path in ("/health", "/ready", "/metrics", "/api/v1/openapi.json"):
        assert api.simulate_get(open_path).status_code == 200
    with pytest.raises(ValueError, match="scopes"):
        create_app(EngineBackend(engine), api_keys={"k": "superuser"})


class ExplodingInput:
    def read(self, *a):
        raise AssertionError("the body was read")

    readline = readlines = read

    def __iter__(self):
        return self


def test_oversized_body_gets_413_before_it_is_read(engine):
    api = client(engine, max_body_bytes=1000)
    res = api.simulate_post("/api/v1/push", headers={"Content-Type": "application/json", "Content-Length": "5000"},
                            extras={"wsgi.input": ExplodingInput()})
    assert "1000" in assert_error(res, 413)["description"]
    # without a Content-Length (chunked), the read itself stops at the limit
    big = b'{"stream": "transactions", "rows": [' + b" " * 5000 + b"]}"
    res = api.simulate_post("/api/v1/push", headers={"Content-Type": "application/json",
                                                     "Transfer-Encoding": "chunked"},
                            extras={"wsgi.input": io.BytesIO(big)})
    assert_error(res, 413)
    small = b'{"stream": "transactions", "rows": []}'
    res = api.simulate_post("/api/v1/push", headers={"Content-Type": "application/json",
                                                     "Transfer-Encoding": "chunked"},
                            extras={"wsgi.input": io.BytesIO(small)})
    assert res.status_code == 200 and res.json["accepted"] == 0, res.text  # read in full; an empty batch is 0 rows


def test_bad_input_statuses(api):
    on = "/api/v1/features/online"
    assert_error(api.simulate_post(on, body="features=x", headers={"Content-Type": "text/plain"}), 415)
    assert_error(api.simulate_post("/api/v1/push", body="{}", headers={"Content-Type": "text/csv"}), 415)
    assert_error(api.simulate_post(on, body='{"features": [', headers={"Content-Type": "application/json"}), 400)
    assert_error(api.simulate_post(on, body=b"\xff\xfe", headers={"Content-Type": "application/json"}), 400)
    assert_error(api.simulate_post("/api/v1/push", params={"stream": "transactions"}, body=b"not arrow",
                                   headers={"Content-Type": ARROW}), 400)
    assert_error(api.simulate_post(on, json={"features": ["user_txn:nope"], "entities": {"user_id": [1]}}), 404)
    assert_error(api.simulate_post(on, json={"features": ["ghost:x"], "entities": {"user_id": [1]}}), 404)
    assert_error(api.simulate_post("/api/v1/push", json={"stream": "ghost", "rows": [{"a": 1}]}), 404)
    assert_error(api.simulate_post(on, json=[1, 2]), 422)
    assert_error(api.simulate_post(on, json={"entities": {"user_id": [1]}}), 422)
    assert_error(api.simulate_post(on, json={"features": ["user_txn:txn_count_1h"],
                                             "entities": {"user_id": ["one"]}}), 422)
    assert_error(api.simulate_post(on, json={"features": ["user_txn:txn_count_1h"],
                                             "entities": {"user_id": [2 ** 70]}}), 422)
    assert_error(api.simulate_post(on, json={"features": ["user_txn:txn_count_1h"], "entities": {"user_id": [1]},
                                             "as_of": "yesterday"}), 422)
    assert "rows" in assert_error(api.simulate_post("/api/v1/push", json={"stream": "transactions", "row": []}),
                                  422)["description"]
    assert "amount" in assert_error(api.simulate_post("/api/v1/push", json={
        "stream": "transactions", "rows": [{**txn(1, T0), "amount": "lots"}]}), 422)["description"]
    assert_error(api.simulate_post("/api/v1/features/historical", json={
        "features": ["user_txn:txn_count_1h"], "entities": {"user_id": [1]}}), 422)


def test_store_that_cannot_persist_answers_503(api, engine):
    def failing_fsync(fd):
        raise OSError(5, "Input/output error")

    engine.wal.close()
    engine.wal = Wal(engine.wal_dir, fsync="always", start_lsn=engine.applied_lsn + 1, fsync_fn=failing_fsync)
    res = api.simulate_post("/api/v1/push", json={"stream": "transactions", "rows": [txn(1, T0)]})
    assert "retry" in assert_error(res, 503)["description"]
    assert_error(api.simulate_get("/ready"), 503)
    assert api.simulate_get("/health").status_code == 200  # alive, just not ready


def test_wal_fsync_error_from_any_backend_maps_to_503(engine):
    class Failing(EngineBackend):
        def push(self, stream, rows, idempotency_key=None):
            raise WalFsyncError("fsync failed on wal/00000001.log")

    api = testing.TestClient(create_app(Failing(engine)))
    assert_error(api.simulate_post("/push", json={"push_source_name": "transactions", "df": {"ts": [1]}}), 503)


# ---- operations

_SAMPLE = re.compile(r'^[a-zA-Z_:][a-zA-Z0-9_:]*(\{([a-zA-Z_][a-zA-Z0-9_]*="([^"\\]|\\.)*",?)*\})? '
                     r'(-?[0-9.e+-]+|\+Inf|-Inf|NaN)$')


def parse_prometheus(text: str) -> dict:
    samples, types = {}, {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            types[name] = kind
        elif line.startswith("# HELP ") or not line:
            continue
        else:
            assert _SAMPLE.match(line), line
            key, value = line.rsplit(" ", 1)
            samples[key] = float(value)
    return {"types": types, "samples": samples}


def test_metrics_text_parses_and_counts(api):
    push(api, [txn(1, T0), txn(1, T0 - 3 * H)])  # the second is late
    api.simulate_post("/api/v1/features/online", json={"features": ["user_txn:nope"], "entities": {"user_id": [1]}})
    m = parse_prometheus(api.simulate_get("/metrics").text)
    assert m["types"]["fstore_http_request_duration_seconds"] == "histogram"
    s = m["samples"]
    assert s['fstore_http_requests_total{method="POST",route="/api/v1/features/online",status="404"}'] == 1
    assert s['fstore_ingest_rows_total{stream="transactions"}'] == 1
    assert s['fstore_late_events_total{stream="transactions"}'] == 1
    assert s['fstore_freshness_lag_seconds{stream="transactions"}'] == (NOW - T0) / 1e6
    assert 'fstore_online_evictions_total{reason="capacity",view="user_txn@v1"}' in s
    buckets = [v for k, v in s.items() if k.startswith("fstore_http_request_duration_seconds_bucket{")
               and 'method="POST",route="/api/v1/push"' in k]
    assert buckets == sorted(buckets) and buckets[-1] == 1


def test_bookkeeping_waits_until_the_response_is_sent(engine, tmp_path):
    """Under `fstore serve` the API's metrics are recorded when the server
    closes the response, after it has written the body
    (fsapp.serve.wsgi.AfterResponse): nothing before."""
    import json as _json
    from fsapp.api.metrics import HttpMetrics
    from fsapp.serve.wsgi import AfterResponse
    http = HttpMetrics()
    hooked = []
    app = AfterResponse(create_app(EngineBackend(engine), http_metrics=http), lambda: hooked.append(1))
    body = _json.dumps({"features": ["user_txn:txn_count_1h"], "entities": {"user_id": [1]}}).encode()
    env = testing.create_environ(method="POST", path="/get-online-features", body=body,
                                 headers={"Content-Type": "application/json"})
    started = []
    result = app(env, lambda status, headers, exc_info=None: started.append(status))
    counted = lambda: {k: v for k, v in parse_prometheus(http.render())["samples"].items()
                       if k.startswith(("fstore_http_requests_total", "fstore_http_request_duration_seconds_count"))}
    assert started == ["200 OK"] and counted() == {} and hooked == []
    assert _json.loads(b"".join(result))["metadata"]["feature_names"] == ["user_id", "txn_count_1h"]
    assert counted() == {}
    result.close()
    assert counted() == {
        'fstore_http_requests_total{method="POST",route="/get-online-features",status="200"}': 1,
        'fstore_http_request_duration_seconds_count{method="POST",route="/get-online-features"}': 1}
    assert hooked == [1]


def test_store_metrics_registry_renders_counters_and_gauges():
    """The engine-side registry (counters kept elsewhere and copied in at
    scrape time, gauges) renders through prometheus_client: types, labels
    escaped, a counter's set and inc."""
    reg = MetricsRegistry()
    c = reg.counter("fstore_x_total", "x", ("view", "reason"))
    c.set(5, view='v"1', reason="capacity")
    c.inc(2, view='v"1', reason="capacity")
    reg.gauge("fstore_g", "g").set(1.5)
    assert reg.counter("fstore_x_total", "x", ("view", "reason")) is c
    with pytest.raises(ValueError, match="another type"):
        reg.gauge("fstore_x_total", "x")
    with pytest.raises(ValueError, match="takes labels"):
        c.inc(1, view="v")
    m = parse_prometheus(reg.render())
    assert m["types"] == {"fstore_x_total": "counter", "fstore_g": "gauge"}
    assert m["samples"] == {'fstore_x_total{reason="capacity",view="v\\"1"}': 7, "fstore_g": 1.5}


_WORKER = """
import sys, time
from fsapp.api.metrics import HttpMetrics
m = HttpMetrics()
for _ in range(int(sys.argv[1])):
    m.observe("GET", "/health", 200, time.perf_counter() - 0.002)
m.observe("POST", "/push", 503, time.perf_counter())
"""


def test_http_metrics_sum_every_worker_process(tmp_path):
    """prometheus_client's multiprocess mode, as gunicorn workers run it:
    each process writes its own files in PROMETHEUS_MULTIPROC_DIR; the sum
    counts the processes that have exited too (a counter never goes back)."""
    import os
    import subprocess
    import sys

    directory = tmp_path / "metrics"
    directory.mkdir()
    env = dict(os.environ, PROMETHEUS_MULTIPROC_DIR=str(directory))
    for n in (3, 4):
        subprocess.run([sys.executable, "-c", _WORKER, str(n)], env=env, check=True, timeout=60)
    render = ("from fsapp.serve.shared_metrics import SharedHttpMetrics; import sys; "
              "sys.stdout.write(SharedHttpMetrics(sys.argv[1]).render())")
    text = subprocess.run([sys.executable, "-c", render, str(directory)], env=env, check=True, timeout=60,
                          capture_output=True, text=True).stdout
    m = parse_prometheus(text)
    s = m["samples"]
    assert m["types"]["fstore_http_request_duration_seconds"] == "histogram"
    assert m["types"]["fstore_http_requests_total"] == "counter"
    assert s['fstore_http_requests_total{method="GET",route="/health",status="200"}'] == 7
    assert s['fstore_http_requests_total{method="POST",route="/push",status="503"}'] == 2
    assert s['fstore_http_request_duration_seconds_count{method="GET",route="/health"}'] == 7
    assert s['fstore_http_request_duration_seconds_bucket{le="0.001",method="GET",route="/health"}'] == 0
    assert s['fstore_http_request_duration_seconds_bucket{le="+Inf",method="GET",route="/health"}'] == 7
    # a worker without the directory set up is refused, not silently uncounted
    bad = subprocess.run([sys.executable, "-c", render, str(tmp_path / "elsewhere")], env=env, timeout=60,
                         capture_output=True, text=True)
    assert bad.returncode != 0 and "PROMETHEUS_MULTIPROC_DIR must name" in bad.stderr


_STARTING_WORKER = """
import errno, os, sys
if sys.argv[2] == "full":
    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    os.posix_fallocate = full
from fsapp.serve.shared_metrics import SharedHttpMetrics
m = SharedHttpMetrics(sys.argv[1])
m.observe("GET", "/health", 200, 0.0)
sys.stdout.write(str(os.getpid()) + "\\n" + m.render())
"""


def test_a_worker_allocates_its_metrics_files_at_start_and_a_full_disk_turns_its_counting_off(tmp_path):
    """prometheus_client's files are sparse mmaps, and a write to a page a full
    disk cannot allocate is a SIGBUS (a dead worker): a worker allocates them
    when it starts; when it cannot, it serves without counting."""
    import os
    import subprocess
    import sys

    from fsapp.serve.shared_metrics import PREALLOCATE_BYTES

    directory = tmp_path / "metrics"
    env = dict(os.environ, PROMETHEUS_MULTIPROC_DIR=str(directory))
    run = lambda mode: subprocess.run([sys.executable, "-c", _STARTING_WORKER, str(directory), mode], env=env,
                                      check=True, timeout=60, capture_output=True, text=True)
    ok = run("ok")
    pid = ok.stdout.split("\n", 1)[0]
    for kind in ("counter", "histogram"):
        st = os.stat(directory / f"{kind}_{pid}.db")
        assert st.st_size == PREALLOCATE_BYTES and st.st_blocks * 512 >= PREALLOCATE_BYTES
    full = run("full")
    pid_full, text = full.stdout.split("\n", 1)
    assert "no room for its HTTP metrics" in full.stderr and "No space left" in full.stderr
    assert not list(directory.glob(f"*_{pid_full}.db"))
    assert parse_prometheus(text)["samples"][
        'fstore_http_requests_total{method="GET",route="/health",status="200"}'] == 1  # the first worker's


def test_openapi_describes_every_route(api):
    doc = api.simulate_get("/api/v1/openapi.json").json
    assert doc["openapi"].startswith("3.")
    routes = {"/api/v1/features/online", "/api/v1/features/historical", "/api/v1/push", "/api/v1/materialize",
              "/api/v1/registry/{kind}", "/api/v1/registry/{kind}/{name}", "/api/v1/lineage/{name}",
              "/get-online-features", "/push", "/write-to-online-store", "/materialize", "/materialize-incremental",
              "/health", "/ready", "/metrics", "/api/v1/openapi.json", "/api/v1/cluster", "/api/v1/stats",
              "/api/v1/whoami"}
    assert set(doc["paths"]) == routes
    for path, ops in doc["paths"].items():
        for op in ops.values():
            assert "200" in op["responses"], path
            for ref in re.findall(r'"\$ref": "#/components/schemas/(\w+)"', str(op).replace("'", '"')):
                assert ref in doc["components"]["schemas"]


def test_online_json_equals_an_oracle_built_from_get_batch(engine):
    """The API's bytes (row images through fscore.jsonenc) parse to what the
    lookup arrays give through the pure-Python encoder (fscore.jsonenc_ref):
    windowed, text and vector features, nulls, found, not found and too-old
    rows, features of two views interleaved, with and without full names."""
    import json

    import numpy as np

    from fscore import jsonenc_ref

    from fsapp.engine.online import count_features

    engine.push("transactions", [txn(1, T0 + 60, amount=12.5), txn(2, T0 + 120, amount=0.1, merchant='m"2'),
                                 txn(1, T0 - 40 * H, amount=7.0)])
    user = ["txn_count_1h", "amount_24h", "avg_amount_1d", "max_amount_7d", "amount_stddev_7d",
            "distinct_merchants_1d", "online_txn_count_1d", "session_txn_count", "last_5_amounts"]
    merchant = ["merchant_txn_count_1h", "volume_1d", "distinct_users_1d", "foreign_txn_count_1d"]
    features = [f"user_txn:{f}" for f in user[:4]] + [f"merchant_txn:{f}" for f in merchant] + \
        [f"user_txn:{f}" for f in user[4:]]
    entities = {"user_id": [1, 2, 3], "merchant_id": ["m1", 'm"2', "x"]}
    keys = {"user_txn": np.array(entities["user_id"]), "merchant_txn": np.array(entities["merchant_id"], dtype=object)}
    for now in (NOW, NOW + 400 * H):
        for full in (True, False):
            got = json.loads(engine.get_online_json(features, entities=entities, now=now, full_feature_names=full))
            want_names, want_results = list(entities), []
            for k in entities:
                want_results.append({"values": entities[k], "statuses": ["PRESENT"] * 3,
                                     "event_timestamps": ["1970-01-01T00:00:00.000000Z"] * 3})
            for ref in features:
                view, feat = ref.split(":")
                info = engine.registry.feature_view(view)
                r = engine.table_of(info).get_batch(keys[view], now)
                kind = "count" if feat in count_features(info) else None  # an empty window counts 0
                want_results.append(json.loads(jsonenc_ref.feature_results([r.values[feat]], [r.nulls[feat]],
                                                                            r.status, r.event_ts, [kind])[0]))
                want_names.append(f"{view}__{feat}" if full else feat)
            assert got == {"metadata": {"feature_names": want_names}, "results": want_results}
            assert engine.get_online_features(features, entities=entities, now=now, full_feature_names=full) == got
    statuses = {s for r in got["results"] for s in r["statuses"]}
    assert statuses >= {"PRESENT", "NOT_FOUND"}


def test_http_metrics_count_every_request_of_a_series():
    """The per-series shortcut after a series' first request counts the same
    as the labelled path: buckets, sum, count and status counter."""
    import time

    from fsapp.api.metrics import HttpMetrics
    m = HttpMetrics()
    t = time.perf_counter()
    for _ in range(3):
        m.observe("POST", "/get-online-features", 200, t)
    m.observe("POST", "/get-online-features", 404, t)
    m.observe("GET", "/health", 200, t)
    s = parse_prometheus(m.render())["samples"]
    assert s['fstore_http_request_duration_seconds_count{method="POST",route="/get-online-features"}'] == 4
    assert s['fstore_http_requests_total{method="POST",route="/get-online-features",status="200"}'] == 3
    assert s['fstore_http_requests_total{method="POST",route="/get-online-features",status="404"}'] == 1
    assert s['fstore_http_request_duration_seconds_bucket{le="+Inf",method="GET",route="/health"}'] == 1


# ---- issue 13: the bad-input battery (each answers 4xx JSON, never 500)

SURROGATE = '"\\ud800"'  # the JSON escape of a lone surrogate


def _raw(api, path, text):
    return api.simulate_post(path, body=text.encode(), headers={"Content-Type": "application/json"})


@pytest.mark.parametrize("path, text", [
    ("/api/v1/push", '{"stream": "transactions", "rows": [{"user_id": 1, "merchant_id": ' + SURROGATE
     + ', "ts": 1764000000}]}'),
    ("/api/v1/push", '{"stream": "transactions", "rows": [{' + SURROGATE + ': 1, "ts": 1764000000}]}'),
    ("/api/v1/push", '{"stream": ' + SURROGATE + ', "rows": []}'),
    ("/push", '{"push_source_name": "transactions", "df": {"user_id": [1], "merchant_id": [' + SURROGATE
     + '], "ts": [1764000000]}}'),
    ("/api/v1/features/online", '{"feature_service": ' + SURROGATE + ', "entities": {"user_id": [1]}}'),
    ("/api/v1/features/online", '{"features": ["merchant_txn:volume_1d"], "entities": {"merchant_id": ['
     + SURROGATE + ']}}'),
    ("/get-online-features", '{"features": ["merchant_txn:volume_1d"], "entities": {"merchant_id": ['
     + SURROGATE + ']}}'),
    ("/api/v1/features/historical", '{"features": ["merchant_txn:volume_1d"], "entities": {"merchant_id": ['
     + SURROGATE + '], "event_timestamp": [1764000000]}}'),
])
def test_lone_surrogates_anywhere_are_400(api, path, text):
    res = _raw(api, path, text)
    assert res.status_code == 400, res.text
    assert "surrogate" in res.json["description"]


@pytest.mark.parametrize("ts", [-1e18, 9e18, -(2**63), "10000-01-01T00:00:00"])
def test_historical_times_out_of_range_are_422(api, ts):
    res = api.simulate_post("/api/v1/features/historical",
                            json={"features": ["user_txn:amount_24h"],
                                  "entities": {"user_id": [1], "event_timestamp": [ts]}})
    assert res.status_code == 422, res.text
    assert "event_timestamp" in res.json["description"]


@pytest.mark.parametrize("row, status", [
    ({"user_id": 3003.7}, 422), ({"user_id": "1020"}, 422), ({"user_id": True}, 422),
    ({"user_id": 1, "amount": True}, 422), ({"user_id": 1, "amount": "NaN"}, 422),
    ({"user_id": 1, "ts": 1.7e18}, 422),  # a year ahead, read as µs: beyond max_future
    ({"user_id": 1, "amount": "1.5"}, 200),
])
def test_push_values_follow_the_input_rules(api, engine, row, status):
    res = api.simulate_post("/api/v1/push", json={"stream": "transactions", "rows": [{**txn(1, NOW - H), **row}]})
    assert res.status_code == status, res.text
    if status != 200:
        assert engine.applied_lsn == 0 and set(res.json) == {"title", "description"}


def test_idempotency_key_header_makes_a_retry_return_the_first_answer(api, engine):
    body = {"stream": "transactions", "rows": [txn(1, NOW - H, amount=2.0)]}
    first = api.simulate_post("/api/v1/push", json=body, headers={"Idempotency-Key": "k-1"})
    again = api.simulate_post("/api/v1/push", json=body, headers={"Idempotency-Key": "k-1"})
    assert first.status_code == again.status_code == 200 and first.json == again.json
    feast = {"push_source_name": "transactions", "df": {k: [v] for k, v in txn(1, NOW - H, amount=2.0).items()}}
    f1 = api.simulate_post("/push", json=feast, headers={"Idempotency-Key": "k-2"})
    f2 = api.simulate_post("/push", json=feast, headers={"Idempotency-Key": "k-2"})
    assert f1.json == f2.json and f1.json["lsn"] == first.json["lsn"] + 1
    assert engine.applied_lsn == 2
    bad = api.simulate_post("/api/v1/push", json=body, headers={"Idempotency-Key": "x" * 300})
    assert bad.status_code == 422 and "idempotency key" in bad.json["description"]


def test_an_engine_that_does_not_answer_is_a_json_503_outcome_unknown(tmp_path):
    """Issue 13, repro 8: a push stuck past gunicorn's 30 s timeout answered an
    HTML 500 and was applied later. The engine socket times out first (20 s in
    fstore serve; 0.3 s here) and the worker answers JSON 503 saying the
    outcome is unknown and how to retry; a connection refused before sending
    says nothing was applied."""
    import socket
    import threading

    from fsapp.engine.errors import EngineUnavailable, OutcomeUnknown
    from fsapp.serve.protocol import EngineClient

    path = str(tmp_path / "slow.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(4)
    held = []
    threading.Thread(target=lambda: held.append(server.accept()), daemon=True).start()
    client = EngineClient(path, timeout=0.3)
    with pytest.raises(OutcomeUnknown, match="outcome unknown: retry with the same Idempotency-Key"):
        client.call("backend", method="push", kwargs={"stream": "s", "rows": [], "idempotency_key": "k"})
    server.close()
    for conn, _ in held:
        conn.close()
    with pytest.raises(EngineUnavailable, match="nothing was applied") as e:
        EngineClient(str(tmp_path / "absent.sock")).call("ping")
    assert not isinstance(e.value, OutcomeUnknown)

    class Stuck:
        def push(self, stream, rows, idempotency_key=None):
            raise OutcomeUnknown("the engine did not answer push (timed out); outcome unknown: retry with the "
                                 "same Idempotency-Key")

    res = testing.TestClient(create_app(Stuck())).simulate_post(
        "/api/v1/push", json={"stream": "s", "rows": [{"a": 1}]})
    assert res.status_code == 503 and res.headers["content-type"].startswith("application/json")
    assert res.json["title"] == "Outcome unknown" and "Idempotency-Key" in res.json["description"]
    assert "/" not in res.json["description"].split("(")[0]  # no socket path in the answer


def test_a_failed_checkpoint_is_counted_and_shown_by_ready_until_one_succeeds(api, engine, monkeypatch):
    """Issue 14, repro 4 without a tmpfs: the failure is remembered, /ready is
    503 with the reason, writes go on, and the next good checkpoint clears it."""
    from fsapp.engine import engine as engine_mod
    import time as _time

    from fsapp.serve.engine_server import CheckpointSchedule, _checkpoint

    real = engine_mod.write_temp
    monkeypatch.setattr(engine_mod, "write_temp",
                        lambda *a, **k: (_ for _ in ()).throw(OSError(28, "No space left on device")))
    # the engine server's loop: the checkpoint never raises, and a failed one is retried sooner
    schedule = CheckpointSchedule(60.0, 2.0, _time.monotonic())
    started = _time.monotonic()
    ok = _checkpoint(engine, schedule.retry_s)
    schedule.done(started, _time.monotonic(), ok)
    assert not ok and engine.checkpoint_failures == 1 and "No space left" in engine.checkpoint_error
    assert schedule.next - _time.monotonic() <= 10.5
    res = api.simulate_get("/ready")
    assert res.status_code == 503 and "checkpoint failed" in res.json["description"]
    assert push(api, [txn(1, NOW - H)])["accepted"] == 1  # still acknowledged (in the WAL)
    assert "fstore_checkpoint_failures_total 1" in api.simulate_get("/metrics").text
    monkeypatch.setattr(engine_mod, "write_temp", real)
    engine.checkpoint()
    assert api.simulate_get("/ready").status_code == 200 and engine.checkpoint_error is None


def test_cluster_without_kafka_says_so(api):
    doc = api.simulate_get("/api/v1/cluster").json
    assert doc["mode"] is None and doc["partitions"] == [] and doc["parked"] == [] and doc["partitioner"] == "murmur2"


def test_no_features_is_refused_on_every_read_path_and_a_wrong_method_or_path_says_what_is_there(api, engine):
    """`"features": []` answered 200 with the entity column alone (a read of nothing that looks like
    a success; Feast refuses it too); a wrong method or path answered "no details"."""
    for path in ("/api/v1/features/online", "/get-online-features"):
        res = api.simulate_post(path, json={"features": [], "entities": {"user_id": [1]}})
        assert "no features requested: name at least one" in assert_error(res, 422)["description"]
    with pytest.raises(RegistryError, match="no features requested"):
        engine.get_online_features([], entities={"user_id": [1]})
    res = api.simulate_post("/metrics", body="x")
    assert assert_error(res, 405)["description"] == "POST is not allowed on /metrics; it takes GET, OPTIONS"
    res = api.simulate_post("/api/v2/push", json={})
    assert "no route /api/v2/push; the API is under /api/v1" in assert_error(res, 404)["description"]


def test_a_query_parameter_given_twice_is_refused_not_read_as_its_last(api):
    """?version=1&version=2 read version 2 (Falcon's get_param answers the last of a repeated one)."""
    res = api.simulate_get("/api/v1/registry/feature_views/user_txn", query_string="version=1&version=2")
    assert "query parameter(s) version given more than once" in assert_error(res, 400)["description"]
    res = api.simulate_post("/api/v1/push", query_string="stream=transactions&stream=other", body=b"x",
                            headers={"Content-Type": "application/vnd.apache.arrow.stream"})
    assert "stream given more than once" in assert_error(res, 400)["description"]
    assert api.simulate_get("/api/v1/registry/feature_views/user_txn", query_string="version=1").status_code == 200
    # a compressed body was read as if plain ("not JSON")
    res = api.simulate_post("/api/v1/push", json={"stream": "transactions", "rows": []},
                            headers={"Content-Encoding": "gzip"})
    assert "Content-Encoding 'gzip' is not accepted" in assert_error(res, 415)["description"]
    assert api.simulate_post("/api/v1/push", json={"stream": "transactions", "rows": []},
                             headers={"Content-Encoding": "identity"}).status_code == 200


def test_an_unknown_query_parameter_is_refused_on_the_api_but_not_on_probes(api):
    """?verison=2 (misspelt) answered the latest version as if it were not there."""
    res = api.simulate_get("/api/v1/registry/feature_views/user_txn", query_string="verison=2")
    assert assert_error(res, 400)["description"] == "unknown query parameter(s) verison; this path takes version"
    res = api.simulate_post("/api/v1/features/online", query_string="debug=1",
                            json={"features": ["user_txn:txn_count_1h"], "entities": {"user_id": [1]}})
    assert assert_error(res, 400)["description"] == "unknown query parameter(s) debug; this path takes none"
    for path in ("/health", "/metrics", "/api/v1/openapi.json"):  # a monitor may add its own (cache busting)
        assert api.simulate_get(path, query_string="_=123").status_code == 200, path


def test_a_read_takes_integral_numbers_as_integer_keys_as_a_push_does(api, engine):
    """A push took `1.0` as the key 1 (docs/api.md, "What a push accepts") but a read of
    `"user_id": [1.0]` (JSON from JavaScript, a pandas column that held a NaN) was 422 "takes
    integers", and every refused key column said only that: now the read takes it, answers the key
    it read, and a refused value is named with its row."""
    push(api, [txn(1, T0 + H), txn(2, T0 + H)])
    on = "/api/v1/features/online"
    want = api.simulate_post(on, json={"features": ["user_txn:txn_count_1h"], "entities": {"user_id": [1, 2]}}).json
    for path in (on, "/get-online-features"):
        res = api.simulate_post(path, json={"features": ["user_txn:txn_count_1h"], "entities": {"user_id": [1.0, 2]}})
        assert res.status_code == 200, res.text
        assert res.json == want
    for keys, said in [([1, 1.5], "takes integers; row 1 holds 1.5"),
                       ([1, "2"], "takes integers, not text: row 1 holds '2'; send the number itself"),
                       ([True], "takes integers; row 0 holds true (a boolean)"),
                       ([1, None], "entity key 'user_id' is null in row 1; give every row its user_id")]:
        res = api.simulate_post(on, json={"features": ["user_txn:txn_count_1h"], "entities": {"user_id": keys}})
        assert said in assert_error(res, 422)["description"], keys
    for keys, said in [(["m1", 7], "takes text; row 1 holds 7"), ([None], "is null in row 0")]:
        res = api.simulate_post(on, json={"features": ["merchant_txn:volume_1d"], "entities": {"merchant_id": keys}})
        assert said in assert_error(res, 422)["description"], keys
    # the SDK: a pandas float column (a merge's NaN made it float) reads; a missing key is named
    import pandas as pd
    from fsapp.engine.errors import BatchError
    from fsapp.sdk.convert import entity_columns
    cols = entity_columns(pd.DataFrame({"user_id": [1.0, 2.0]}))
    assert engine.get_online_features(["user_txn:txn_count_1h"], entities=cols)["results"][1]["values"] == \
        want["results"][1]["values"]
    with pytest.raises(BatchError, match="is null in row 1"):
        engine.get_online_features(["user_txn:txn_count_1h"],
                                   entities=entity_columns({"user_id": pd.Series([1, None], dtype="Int64")}))
    with pytest.raises(BatchError, match="takes 64-bit integers; row 1 holds -9223372036854775809"):
        engine.get_online_features(["user_txn:txn_count_1h"], entities={"user_id": [2 ** 63 - 1, -2 ** 63 - 1]})


def test_a_sum_that_overflowed_reads_null_value_not_present_null(api):
    """Two amounts of 1.7e308 make amount_24h infinite: served as null (JSON has no inf) and null
    in training sets, but its status said PRESENT (a null value no other status explained)."""
    push(api, [txn(7, T0 + H, amount=1.7e308), txn(7, T0 + H + 1, amount=1.7e308), txn(8, T0 + H)])
    res = api.simulate_post("/api/v1/features/online", json={
        "features": ["user_txn:amount_24h", "user_txn:txn_count_1h"], "entities": {"user_id": [7, 8]}})
    _, total, count = res.json["results"]
    assert total["values"] == [None, 5.0] and total["statuses"] == ["NULL_VALUE", "PRESENT"]
    assert count["values"] == [2, 1] and count["statuses"] == ["PRESENT", "PRESENT"]
    res = api.simulate_post("/api/v1/features/online", json={
        "features": ["user_txn:amount_24h"], "entities": {"user_id": [7, 8]}, "as_of": NOW})
    assert res.json["results"][1]["statuses"] == ["NULL_VALUE", "PRESENT"], res.text
    res = api.simulate_post("/api/v1/features/historical", json={
        "features": ["user_txn:amount_24h"], "entities": {"user_id": [7, 8], "event_timestamp": [NOW, NOW]}})
    assert res.json["columns"]["amount_24h"] == [None, 5.0]


def test_historical_takes_a_feature_service_as_online_reads_do(api):
    """`/api/v1/features/online` took `feature_service` but the historical endpoint answered 422
    "unknown field(s) 'feature_service'": a REST client had to expand the service itself."""
    push(api, [txn(1, T0 + H), txn(2, T0 + H, merchant="m2")])
    h = "/api/v1/features/historical"
    ents = {"user_id": [1, 2], "merchant_id": ["m1", "m2"], "event_timestamp": [NOW, NOW]}
    svc = api.simulate_get("/api/v1/registry/feature_service/fraud_v1").json
    refs = [r.replace("@v1", "") for r in svc["resolved"]["features"]]
    by_service = api.simulate_post(h, json={"feature_service": "fraud_v1", "entities": ents})
    assert by_service.status_code == 200, by_service.text
    assert by_service.json == api.simulate_post(h, json={"features": refs, "entities": ents}).json
    assert "give exactly one of 'features'" in assert_error(api.simulate_post(h, json={
        "feature_service": "fraud_v1", "features": refs, "entities": ents}), 422)["description"]
    assert_error(api.simulate_post(h, json={"feature_service": "nope", "entities": ents}), 404)
    assert "not a feature_service" in assert_error(api.simulate_post(h, json={
        "feature_service": "user_txn", "entities": ents}), 404)["description"]


def test_materialize_says_what_its_views_must_be(api):
    """`"views": []` answered 200 having done nothing; a service, an on-demand view or an entity
    named there was an "unknown feature view"; the example for a bad list showed a feature."""
    m = "/api/v1/materialize"
    assert "'views' is empty: name at least one view, or leave 'views' out for all" in assert_error(
        api.simulate_post(m, json={"end": NOW, "views": []}), 422)["description"]
    assert 'e.g. ["user_txn"]' in assert_error(api.simulate_post(m, json={"end": NOW, "views": "user_txn"}),
                                               422)["description"]
    for name, said in [("fraud_v1", "fraud_v1 is a feature service, not a feature view"),
                       ("txn_context", "txn_context is an on-demand view, not a feature view"),
                       ("card_user", "card_user is an entity, not a feature view")]:
        assert said in assert_error(api.simulate_post(m, json={"end": NOW, "views": [name]}), 404)["description"]
    # the registry's wording stays "is a KIND": the SDK's describe (of any version) matches on it
    res = api.simulate_get("/api/v1/registry/feature_view/card_user")
    assert assert_error(res, 404)["description"].startswith("card_user is a entity, not a feature_view")
    assert api.simulate_post(m, json={"end": NOW, "views": ["user_txn", "user_txn"]}).json["views"] == {"user_txn": 0}


def test_a_label_column_sql_cannot_name_is_422_not_500(api):
    """`"entities": {..., "a\\u0000b": [1]}` answered 500 (DuckDB's binder could not name it)."""
    res = api.simulate_post("/api/v1/features/historical", json={
        "features": ["user_txn:txn_count_1h"], "entities": {"user_id": [1], "event_timestamp": [NOW], "a\x00b": [1]}})
    assert "has a NUL character in its name" in assert_error(res, 422)["description"]


def test_a_version_past_64_bits_is_404_not_500(api):
    # SQLite's OverflowError on view@v99999999999999999999999 answered 500
    res = api.simulate_post("/api/v1/features/online", json={
        "features": ["user_txn@v99999999999999999999999:txn_count_1h"], "entities": {"user_id": [1]}})
    assert "user_txn has no version 99999999999999999999999 (versions 1..1)" in assert_error(res, 404)["description"]


def test_rows_that_are_empty_objects_are_refused_not_accepted_as_none(api):
    # [{}] answered 200 {"accepted": 0}: a table of no columns has no rows
    res = api.simulate_post("/api/v1/push", json={"stream": "transactions", "rows": [{}, {}]})
    assert "row 0 of 2 is an empty object" in assert_error(res, 422)["description"]


def test_times_before_year_1000_are_iso_8601_with_four_digit_years(api):
    # "1-01-01T00:00:00.000000Z" (glibc's strftime %Y): not ISO-8601, and our own parser refused it
    req = {"features": ["user_txn:txn_count_1h"], "entities": {"user_id": [1], "event_timestamp": ["0001-01-01T00:00:00Z"]}}
    res = api.simulate_post("/api/v1/features/historical", json=req)
    assert res.status_code == 200, res.text
    stamp = res.json["columns"]["event_timestamp"][0]
    assert stamp == "0001-01-01T00:00:00.000000Z"
    again = api.simulate_post("/api/v1/features/historical", json={**req, "entities": {"user_id": [1],
                                                                                       "event_timestamp": [stamp]}})
    assert again.status_code == 200 and again.json["columns"]["event_timestamp"] == [stamp]
