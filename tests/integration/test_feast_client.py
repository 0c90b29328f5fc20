"""Feast's own SDK against `fstore serve` (issue 17): a Feast repo whose
online store is `type: remote` pointing at fstore, and Feast's
`get_online_features` (scalars, lists, strings, missing keys, a feature
service, full feature names), `push`, `write_to_online_store` and
`materialize` — the real client code, run in its own venv (Feast pins
numpy/pandas/pyarrow versions of its own; benches/feast_peer.py makes it)."""
import json
import subprocess
import textwrap
import time
import urllib.request

import pytest

DEFS = """
CREATE ENTITY card_user (user_id BIGINT);
CREATE STREAM txns (user_id BIGINT, amount DOUBLE, country VARCHAR, ts TIMESTAMP)
    WITH (timestamp = 'ts', allowed_lateness = '1h');
CREATE FEATURE VIEW user_txn AS
SELECT user_id, count(*) OVER lifetime() AS n, sum(amount) OVER lifetime() AS total,
       last_k(amount, 3) OVER lifetime() AS last_3
FROM txns;
CREATE FEATURE VIEW user_last AS
SELECT user_id, amount AS last_amount, country AS last_country, upper(country) AS country_uc FROM txns;
CREATE FEATURE SERVICE fraud AS (user_txn:n, user_last:last_country);
"""

FEATURES_PY = """
from datetime import timedelta
from feast import Entity, FeatureService, FeatureView, Field, FileSource, PushSource, ValueType
from feast.types import Array, Float64, Int64, String

user = Entity(name="card_user", join_keys=["user_id"], value_type=ValueType.INT64)
batch = FileSource(name="txns_batch", path="{parquet}", timestamp_field="ts")
push = PushSource(name="txns", batch_source=batch)
user_txn = FeatureView(name="user_txn", entities=[user], ttl=timedelta(days=3650), source=batch, online=True,
                       schema=[Field(name="n", dtype=Int64), Field(name="total", dtype=Float64),
                               Field(name="last_3", dtype=Array(Float64))])
user_last = FeatureView(name="user_last", entities=[user], ttl=timedelta(days=3650), source=push, online=True,
                        schema=[Field(name="last_amount", dtype=Float64), Field(name="last_country", dtype=String)])
fraud = FeatureService(name="fraud", features=[user_txn[["n"]], user_last[["last_country"]]])
"""

STORE_YAML = """project: fstore_compat
registry: {root}/registry.db
provider: local
online_store:
  type: remote
  path: {url}
offline_store:
  type: file
entity_key_serialization_version: 3
"""

CLIENT_PY = """
import json, sys
from datetime import datetime, timedelta, timezone
import pandas as pd
from feast import FeatureStore
from feast.data_source import PushMode

store = FeatureStore(repo_path=sys.argv[1])
out = {}
def read(features, ids, **kw):
    r = store.get_online_features(features=features, entity_rows=[{"user_id": i} for i in ids], **kw)
    return r.to_dict()

feats = ["user_txn:n", "user_txn:total", "user_txn:last_3", "user_last:last_amount", "user_last:last_country"]
out["scalars_lists_strings_missing"] = read(feats, [1, 2, 999])
out["full_names"] = read(["user_txn:n", "user_last:last_country"], [1], full_feature_names=True)
out["service"] = read(store.get_feature_service("fraud"), [1, 2])
now = datetime.now(timezone.utc).replace(tzinfo=None)
store.push("txns", pd.DataFrame({"user_id": [2], "last_amount": [7.5], "last_country": ["NL"],
                                 "ts": [now - timedelta(seconds=5)]}), to=PushMode.ONLINE)
out["after_push"] = read(feats, [2])
store.write_to_online_store("user_last", pd.DataFrame({"user_id": [3], "last_amount": [1.25], "last_country": ["FR"],
                                                       "ts": [now - timedelta(seconds=4)]}))
out["after_write"] = read(feats, [3])
store.materialize(now - timedelta(days=1), now, ["user_last"])
out["after_materialize"] = read(["user_last:last_amount", "user_last:last_country"], [1, 4])
try:
    store.materialize(now - timedelta(days=1), now, ["user_txn"])
    out["aggregated_materialize"] = "accepted"
except Exception as e:
    out["aggregated_materialize"] = str(e)
print(json.dumps(out, default=str))
"""


@pytest.fixture(scope="module")
def feast_python():
    from benches.feast_peer import FeastUnavailable, ensure_venv
    try:
        return ensure_venv()
    except FeastUnavailable as e:
        pytest.fail(f"Feast is needed for the compatibility tests (.ci/run installs it): {e}")


def post(url, doc):
    req = urllib.request.Request(url, data=json.dumps(doc).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def test_feasts_own_client_reads_pushes_writes_and_materializes(serve_repo, feast_python, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    base, _, _ = serve_repo(DEFS)
    t = time.time_ns() // 1000 - 60_000_000
    status, body = post(base + "/api/v1/push", {"stream": "txns", "rows": [
        {"user_id": 1, "amount": 10.0, "country": "DE", "ts": t},
        {"user_id": 1, "amount": 2.5, "country": "US", "ts": t + 1_000_000},
        {"user_id": 2, "amount": 4.0, "country": "DE", "ts": t + 2_000_000}]})
    assert status == 200, body
    feast_repo = tmp_path / "feast_repo"
    feast_repo.mkdir()
    parquet = feast_repo / "batch.parquet"
    now_s = time.time()
    pq.write_table(pa.table({"user_id": pa.array([4], pa.int64()), "last_amount": [3.5], "last_country": ["IT"],
                             "n": pa.array([9], pa.int64()), "total": [1.0],
                             "ts": pa.array([int((now_s - 600) * 1e6)], pa.timestamp("us", tz="UTC"))}), parquet)
    (feast_repo / "feature_store.yaml").write_text(STORE_YAML.format(root=feast_repo, url=base))
    (feast_repo / "features.py").write_text(FEATURES_PY.format(parquet=parquet))
    client = tmp_path / "client.py"  # outside the repo: `feast apply` imports every module in it
    client.write_text(textwrap.dedent(CLIENT_PY))
    feast = str(feast_python).replace("/python", "/feast")
    r = subprocess.run([feast, "apply"], cwd=feast_repo, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    r = subprocess.run([feast_python, str(client), str(feast_repo)], cwd=feast_repo, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])

    got = out["scalars_lists_strings_missing"]
    assert got["user_id"] == [1, 2, 999]
    assert got["n"] == [2, 1, 0] and got["total"] == [12.5, 4.0, None]  # an unknown key counts 0 (NOT_FOUND)
    assert got["last_3"] == [[2.5, 10.0], [4.0], None]  # newest first, not padded with nulls
    assert got["last_amount"] == [2.5, 4.0, None] and got["last_country"] == ["US", "DE", None]
    assert out["full_names"] == {"user_id": [1], "user_txn__n": [2], "user_last__last_country": ["US"]}
    assert out["service"]["n"] == [2, 1] and out["service"]["last_country"] == ["US", "DE"]
    # push through Feast: an event on stream txns (the view's source) — every view of the stream sees it
    after = out["after_push"]
    assert after["last_amount"] == [7.5] and after["last_country"] == ["NL"] and after["n"] == [2]
    assert out["after_write"]["last_amount"] == [1.25] and out["after_write"]["n"] == [1]
    # Feast's materialize with a remote online store is POST /materialize on the server: fstore
    # recomputes from its own offline log (Feast's offline files are not fstore's events)
    assert out["after_materialize"] == {"user_id": [1, 4], "last_amount": [2.5, None],
                                        "last_country": ["US", None]}
    assert out["aggregated_materialize"] == "accepted"
    metrics = urllib.request.urlopen(base + "/metrics").read().decode()
    assert 'route="/materialize",status="200"} 2.0' in metrics


def test_feast_http_materialize_write_and_unsupported_endpoints(serve_repo):
    base, _, _ = serve_repo(DEFS)
    t = time.time_ns() // 1000 - 60_000_000
    assert post(base + "/api/v1/push", {"stream": "txns", "rows": [
        {"user_id": 1, "amount": 10.0, "country": "DE", "ts": t}]})[0] == 200
    # Feast's feature-server request shapes
    status, body = post(base + "/materialize", {"start_ts": "2020-01-01T00:00:00", "end_ts": "2100-01-01T00:00:00",
                                                "feature_views": ["user_txn"]})
    assert status == 200 and body["views"] == {"user_txn": 1}, body
    status, body = post(base + "/materialize-incremental", {"end_ts": "2100-01-01T00:00:00"})
    assert status == 200 and set(body["views"]) == {"user_txn", "user_last"}, body
    status, body = post(base + "/materialize", {"end_ts": "2100-01-01T00:00:00"})
    assert status == 422 and "start_ts" in body["description"]
    status, body = post(base + "/materialize", {"start_ts": "2020-01-01", "end_ts": "2100-01-01", "version": "v1"})
    assert status == 422 and "latest version" in body["description"]
    # write-to-online-store: renames go back to the stream's columns; computed features and unknown views refused
    import datetime as dt
    naive = dt.datetime.fromtimestamp(t / 1e6 + 2, dt.timezone.utc).replace(tzinfo=None).isoformat()  # as Feast sends
    status, body = post(base + "/write-to-online-store", {"feature_view_name": "user_last", "df": {
        "user_id": [5], "last_amount": [2.0], "last_country": ["SE"], "event_timestamp": [naive],
        "created": [None]}, "allow_registry_cache": False})
    assert status == 200 and body["accepted"] == 1, body
    status, body = post(base + "/get-online-features", {"features": ["user_last:last_country"],
                                                        "entities": {"user_id": [5]}})
    assert body["results"][1]["values"] == ["SE"]
    status, body = post(base + "/write-to-online-store", {"feature_view_name": "user_last", "df": {
        "user_id": [5], "country_uc": ["SE"], "event_timestamp": ["2026-11-30T00:00:00"]}})
    assert status == 422 and "upper(country)" in body["description"]
    status, body = post(base + "/write-to-online-store", {"feature_view_name": "nope", "df": {"user_id": [1]}})
    assert status == 404
    status, body = post(base + "/write-to-online-store", {"feature_view_name": "user_last", "df": {"user_id": [5]}})
    assert status == 422 and "event_timestamp" in body["description"]
    status, body = post(base + "/retrieve-online-documents", {"features": ["user_last:last_amount"], "query": [1.0]})
    assert status == 400 and "vector" in body["description"]


GRPC_CLIENT_PY = """
import json, sys
import grpc
from feast.protos.feast.serving import ServingService_pb2 as pb
from feast.protos.feast.serving import ServingService_pb2_grpc as pb_grpc
from feast.protos.feast.types import Value_pb2 as vpb

stub = pb_grpc.ServingServiceStub(grpc.insecure_channel(sys.argv[1]))
ids = vpb.RepeatedValue(val=[vpb.Value(int64_val=1), vpb.Value(int64_val=999)])
r = stub.GetOnlineFeatures(pb.GetOnlineFeaturesRequest(
    features=pb.FeatureList(val=["user_txn:n", "user_txn:last_3", "user_last:last_country"]), entities={"user_id": ids}))
s = stub.GetOnlineFeatures(pb.GetOnlineFeaturesRequest(feature_service="fraud", full_feature_names=True,
                                                       entities={"user_id": ids}))
print(json.dumps({"names": list(r.metadata.feature_names.val),
                  "n": [v.int64_val for v in r.results[1].values],
                  "last_3": [list(v.double_list_val.val) for v in r.results[2].values],
                  "country": [v.string_val if v.HasField("string_val") else None for v in r.results[3].values],
                  "statuses": [pb.FieldStatus.Name(x) for x in r.results[3].statuses],
                  "ts": r.results[3].event_timestamps[0].seconds,
                  "service_names": list(s.metadata.feature_names.val),
                  "version": stub.GetFeastServingInfo(pb.GetFeastServingInfoRequest()).version}))
"""


def test_feasts_own_grpc_stubs_read_from_fstore(serve_repo, feast_python, grpc_port_of, tmp_path):
    """The wire contract: Feast's generated ServingService stubs and Value
    messages (its own protos, not ours) against fstore's gRPC port."""
    base, _, log = serve_repo(DEFS)
    t = time.time_ns() // 1000 - 60_000_000
    assert post(base + "/api/v1/push", {"stream": "txns", "rows": [
        {"user_id": 1, "amount": 10.0, "country": "DE", "ts": t},
        {"user_id": 1, "amount": 2.5, "country": "US", "ts": t + 1_000_000}]})[0] == 200
    client = tmp_path / "grpc_client.py"
    client.write_text(GRPC_CLIENT_PY)
    r = subprocess.run([feast_python, str(client), f"127.0.0.1:{grpc_port_of(log)}"], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["names"] == ["user_id", "n", "last_3", "last_country"]
    assert out["n"] == [2, 0] and out["last_3"] == [[2.5, 10.0], []] and out["country"] == ["US", None]
    assert out["statuses"] == ["PRESENT", "NOT_FOUND"] and out["ts"] == (t + 1_000_000) // 1_000_000
    assert out["service_names"] == ["user_id", "user_txn__n", "user_last__last_country"]
    assert out["version"].startswith("fstore")
