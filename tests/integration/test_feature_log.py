"""Feature logging: every online response of a logged feature service lands
in Parquet (asynchronously) and joins back to labels for training."""
import json
import time
import urllib.request

import pandas as pd

from fsapp.serve.feature_log import explode_record, load_feature_log

DEFS = """
CREATE ENTITY account (account_id BIGINT);
CREATE STREAM payments (account_id BIGINT, amount DOUBLE, ts TIMESTAMP) WITH (timestamp = 'ts');
CREATE FEATURE VIEW account_totals AS
SELECT account_id, count(*) OVER lifetime() AS n_payments, sum(amount) OVER lifetime() AS total
FROM payments;
CREATE FEATURE SERVICE risk_v1 AS (account_totals:n_payments, account_totals:total);
"""


def post(url, body):
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


def test_logged_responses_join_back_to_labels(serve_repo, tmp_path):
    base, _, _ = serve_repo(DEFS, "feature_logging:\n  services: risk_v1\n  path: data/feature_log\n"
                                  "  flush_seconds: 0.2\n")
    now = time.time()
    post(base + "/api/v1/push", {"stream": "payments", "rows": [
        {"account_id": 1, "amount": 5.0, "ts": now - 3}, {"account_id": 2, "amount": 7.0, "ts": now - 2},
        {"account_id": 1, "amount": 1.0, "ts": now - 1}]})
    served = [post(base + "/get-online-features", {"feature_service": "risk_v1",
                                                   "entities": {"account_id": [1, 2, 3]}}) for _ in range(3)]
    post(base + "/get-online-features", {"features": ["account_totals:total"], "entities": {"account_id": [1]}})
    log = pd.DataFrame()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        log = load_feature_log(str(tmp_path / "repo" / "data" / "feature_log"), "risk_v1")
        if len(log) >= 9:
            break
        time.sleep(0.2)
    assert len(log) == 9  # 3 responses x 3 entity rows; the request without the service is not logged
    assert log["request_id"].nunique() == 3 and set(log["feature_service"]) == {"risk_v1"}
    first = log[log["request_id"] == log["request_id"].iloc[0]].sort_values("account_id")
    assert first["n_payments"].tolist()[:2] == served[0]["results"][1]["values"][:2] == [2, 1]
    assert first["n_payments__status"].tolist() == ["PRESENT", "PRESENT", "NOT_FOUND"]
    labels = pd.DataFrame({"account_id": [1, 2], "is_fraud": [True, False]})
    train = log.merge(labels, on="account_id")
    assert len(train) == 6 and train.groupby("account_id")["total"].first().tolist() == [6.0, 7.0]


def test_logged_responses_go_to_a_kafka_topic_when_configured(serve_repo, kafka_broker):
    kafka_broker.create_topic("feature-log")
    base, _, _ = serve_repo(DEFS, f"kafka:\n  bootstrap_servers: {kafka_broker.bootstrap}\n"
                                  "feature_logging:\n  services: risk_v1\n  topic: feature-log\n")
    post(base + "/api/v1/push", {"stream": "payments", "rows": [{"account_id": 4, "amount": 2.0,
                                                                 "ts": time.time() - 1}]})
    post(base + "/get-online-features", {"feature_service": "risk_v1", "entities": {"account_id": [4, 5]}})
    records = []
    deadline = time.monotonic() + 20
    while not records and time.monotonic() < deadline:
        records = [json.loads(m.value()) for m in kafka_broker.read_all("feature-log", timeout_s=3)]
    assert len(records) == 1  # one message per response
    rows = pd.DataFrame(explode_record(records[0])).set_index("account_id")
    assert rows.loc[4, "n_payments"] == 1 and rows.loc[5, "n_payments__status"] == "NOT_FOUND"
    assert rows["request_id"].nunique() == 1
