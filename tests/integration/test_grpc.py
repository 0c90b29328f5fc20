"""gRPC serving (issue 17): `fstore serve` answers Feast's
`feast.serving.ServingService` and `grpc.health.v1` on its gRPC port, from the
same shared-memory tables as the REST workers, with the same API keys and
error meanings. The client is generated from our .proto files; the wire
contract (package, names, field numbers) is Feast's."""
import json
import time
import urllib.request

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from fsapp.grpc.protos.feast.serving import ServingService_pb2 as pb
from fsapp.grpc.protos.feast.serving import ServingService_pb2_grpc as pb_grpc
from fsapp.grpc.protos.feast.types import Value_pb2 as vpb

DEFS = """
CREATE ENTITY card_user (user_id BIGINT);
CREATE ENTITY merchant (merchant_id VARCHAR);
CREATE STREAM txns (user_id BIGINT, merchant_id VARCHAR, amount DOUBLE, country VARCHAR, ts TIMESTAMP)
    WITH (timestamp = 'ts', allowed_lateness = '1h');
CREATE FEATURE VIEW user_txn AS
SELECT user_id, count(*) OVER lifetime() AS n, sum(amount) OVER lifetime() AS total,
       last_k(amount, 3) OVER lifetime() AS last_3
FROM txns;
CREATE FEATURE VIEW user_last AS SELECT user_id, country AS last_country FROM txns;
CREATE FEATURE VIEW merchant_txn AS SELECT merchant_id, count(*) OVER lifetime() AS m_n FROM txns;
CREATE FEATURE SERVICE fraud AS (user_txn:n, user_last:last_country);
CREATE REQUEST SOURCE req (amount DOUBLE);
CREATE ON DEMAND FEATURE VIEW ratio AS SELECT amount / user_txn.total AS of_total, user_txn.n + 1 AS n_next
FROM req, user_txn;
"""


def push(base, rows, key=None):
    req = urllib.request.Request(base + "/api/v1/push", data=json.dumps({"stream": "txns", "rows": rows}).encode(),
                                 headers={"Content-Type": "application/json",
                                          **({"Authorization": f"Bearer {key}"} if key else {})})
    with urllib.request.urlopen(req, timeout=30) as r:
        assert r.status == 200


def ints(*xs):
    return vpb.RepeatedValue(val=[vpb.Value(int64_val=x) for x in xs])


def test_get_online_features_over_grpc_equals_rest(serve_repo, grpc_port_of):
    base, _, log = serve_repo(DEFS)
    port = grpc_port_of(log)
    t = time.time_ns() // 1000 - 60_000_000
    push(base, [{"user_id": 1, "merchant_id": "m1", "amount": 10.0, "country": "DE", "ts": t},
                {"user_id": 1, "merchant_id": "m2", "amount": 2.5, "country": "US", "ts": t + 1_000_000},
                {"user_id": 2, "merchant_id": "m1", "amount": 4.0, "country": "FR", "ts": t + 2_000_000}])
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        stub = pb_grpc.ServingServiceStub(ch)
        assert stub.GetFeastServingInfo(pb.GetFeastServingInfoRequest()).version.startswith("fstore")
        health = health_pb2_grpc.HealthStub(ch)
        assert health.Check(health_pb2.HealthCheckRequest(service="feast.serving.ServingService")).status == \
            health_pb2.HealthCheckResponse.SERVING
        req = pb.GetOnlineFeaturesRequest(
            features=pb.FeatureList(val=["user_txn:n", "user_txn:total", "user_txn:last_3", "user_last:last_country"]),
            entities={"user_id": ints(1, 2, 999)})
        resp = stub.GetOnlineFeatures(req)
        assert list(resp.metadata.feature_names.val) == ["user_id", "n", "total", "last_3", "last_country"]
        ids, n, total, last3, country = resp.results
        assert [v.int64_val for v in ids.values] == [1, 2, 999]
        assert [v.int64_val for v in n.values] == [2, 1, 0]
        assert [v.double_val for v in total.values[:2]] == [12.5, 4.0] and total.values[2].WhichOneof("val") is None
        assert [list(v.double_list_val.val) for v in last3.values[:2]] == [[2.5, 10.0], [4.0]]
        assert [v.string_val for v in country.values[:2]] == ["US", "FR"]
        assert list(country.statuses) == [pb.PRESENT, pb.PRESENT, pb.NOT_FOUND]
        assert country.event_timestamps[0].seconds == (t + 1_000_000) // 1_000_000
        # the same answer as REST, value for value
        rest = json.loads(urllib.request.urlopen(urllib.request.Request(
            base + "/get-online-features", data=json.dumps({"features": ["user_last:last_country"],
                                                            "entities": {"user_id": [1, 2, 999]}}).encode(),
            headers={"Content-Type": "application/json"})).read())
        assert rest["results"][1]["values"] == [v.string_val or None for v in country.values]
        assert rest["results"][1]["statuses"] == [pb.FieldStatus.Name(s) for s in country.statuses]
        # a feature service, full feature names, text keys
        resp = stub.GetOnlineFeatures(pb.GetOnlineFeaturesRequest(feature_service="fraud", full_feature_names=True,
                                                                   entities={"user_id": ints(1)}))
        assert list(resp.metadata.feature_names.val) == ["user_id", "user_txn__n", "user_last__last_country"]
        resp = stub.GetOnlineFeatures(pb.GetOnlineFeaturesRequest(
            features=pb.FeatureList(val=["merchant_txn:m_n"]),
            entities={"merchant_id": vpb.RepeatedValue(val=[vpb.Value(string_val="m1")])}))
        assert resp.results[1].values[0].int64_val == 2
        # on-demand features: request_context holds their request columns (issue 18)
        resp = stub.GetOnlineFeatures(pb.GetOnlineFeaturesRequest(
            features=pb.FeatureList(val=["ratio:of_total", "ratio:n_next"]), entities={"user_id": ints(1, 999)},
            request_context={"amount": vpb.RepeatedValue(val=[vpb.Value(double_val=25.0),
                                                              vpb.Value(double_val=1.0)])}))
        of_total, n_next = resp.results[-2:]
        assert of_total.values[0].double_val == 2.0 and of_total.values[1].WhichOneof("val") is None
        assert [v.int64_val for v in n_next.values] == [3, 1]
        with pytest.raises(grpc.RpcError) as err:
            stub.GetOnlineFeatures(pb.GetOnlineFeaturesRequest(features=pb.FeatureList(val=["ratio:of_total"]),
                                                               entities={"user_id": ints(1)}))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "amount" in err.value.details()
        # many at once (the server's thread pool shares one reader and one registry connection)
        futures = [stub.GetOnlineFeatures.future(req) for _ in range(64)]
        assert all([f.result(timeout=30).results[1].values[0].int64_val == 2 for f in futures])
        # errors: the REST API's meanings as status codes
        for request, code in (
                (pb.GetOnlineFeaturesRequest(features=pb.FeatureList(val=["nope:x"]), entities={"user_id": ints(1)}),
                 grpc.StatusCode.NOT_FOUND),
                (pb.GetOnlineFeaturesRequest(entities={"user_id": ints(1)}), grpc.StatusCode.INVALID_ARGUMENT),
                (pb.GetOnlineFeaturesRequest(features=pb.FeatureList(val=["user_txn:n"]),
                                             entities={"user_id": vpb.RepeatedValue(val=[vpb.Value(bool_val=True)])}),
                 grpc.StatusCode.INVALID_ARGUMENT),
                (pb.GetOnlineFeaturesRequest(features=pb.FeatureList(val=["user_txn:n"]),
                                             entities={"merchant_id": ints(1)}), grpc.StatusCode.INVALID_ARGUMENT)):
            with pytest.raises(grpc.RpcError) as err:
                stub.GetOnlineFeatures(request)
            assert err.value.code() == code, (request, err.value.details())
            assert err.value.details()


def test_grpc_takes_the_same_api_keys(serve_repo, grpc_port_of, tmp_path):
    keys = tmp_path / "keys.txt"
    keys.write_text("reader-key read\nwriter-key write\n")
    base, _, log = serve_repo(DEFS, f"auth:\n  api_keys_file: {keys}\n")
    port = grpc_port_of(log)
    push(base, [{"user_id": 1, "merchant_id": "m1", "amount": 1.0, "country": "DE",
                 "ts": time.time_ns() // 1000 - 1_000_000}], key="writer-key")
    req = pb.GetOnlineFeaturesRequest(features=pb.FeatureList(val=["user_txn:n"]), entities={"user_id": ints(1)})
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        stub = pb_grpc.ServingServiceStub(ch)
        for metadata, code in ((None, grpc.StatusCode.UNAUTHENTICATED),
                               ([("authorization", "Bearer wrong")], grpc.StatusCode.UNAUTHENTICATED),
                               ([("authorization", "Bearer writer-key")], grpc.StatusCode.PERMISSION_DENIED)):
            with pytest.raises(grpc.RpcError) as err:
                stub.GetOnlineFeatures(req, metadata=metadata)
            assert err.value.code() == code
        resp = stub.GetOnlineFeatures(req, metadata=[("authorization", "Bearer reader-key")])
        assert resp.results[1].values[0].int64_val == 1


def test_a_killed_grpc_process_is_replaced_and_requests_go_on(serve_repo, grpc_port_of):
    import os
    import signal

    base, _, log = serve_repo(DEFS)
    port = grpc_port_of(log)
    log.seek(0)
    line = next(ln for ln in log.read().splitlines() if "gRPC pids" in ln)
    pids = [int(p) for p in line.split("gRPC pids ")[1].split(" on ")[0].split(", ")]
    assert len(pids) == 2
    os.kill(pids[0], signal.SIGKILL)
    deadline = time.monotonic() + 30
    while True:
        log.seek(0)
        if f"gRPC server pid {pids[0]} exited" in log.read():
            break
        assert time.monotonic() < deadline, "the supervisor did not notice the killed gRPC process"
        time.sleep(0.1)
    req = pb.GetOnlineFeaturesRequest(features=pb.FeatureList(val=["user_txn:n"]), entities={"user_id": ints(1)})
    for _ in range(20):  # new connections land on either process
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            deadline = time.monotonic() + 20
            while True:
                try:
                    pb_grpc.ServingServiceStub(ch).GetOnlineFeatures(req, timeout=5)
                    break
                except grpc.RpcError:
                    assert time.monotonic() < deadline, "gRPC did not answer after a process was killed"
                    time.sleep(0.1)
