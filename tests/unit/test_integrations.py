"""The integrations' pure parts, without MLflow or KFP: which pinned
references a lineage query names, models hung below the features they read,
the feature matrix (same at training and serving time), where a model finds
its store, and a core that never imports MLflow or KFP."""
import subprocess
import sys

import pytest

from fsapp.integrations import IntegrationError
from fsapp.integrations.training import feature_frame, matching_refs, store_location
from fsapp.registry.lineage import render_lineage, with_models
from fsapp.sdk.provenance import Provenance

REFS = ["user_txn@v1:amount_24h", "user_txn@v1:txn_count_1h", "merchant_txn@v2:n"]


@pytest.mark.parametrize("query, expected", [
    ("user_txn:amount_24h", ["user_txn@v1:amount_24h"]),
    ("user_txn@v1:amount_24h", ["user_txn@v1:amount_24h"]),
    ("user_txn@v2:amount_24h", []),
    ("user_txn", ["user_txn@v1:amount_24h", "user_txn@v1:txn_count_1h"]),
    ("user_txn:*", ["user_txn@v1:amount_24h", "user_txn@v1:txn_count_1h"]),
    ("merchant_txn@v2", ["merchant_txn@v2:n"]),
    ("fraud_v1", REFS),  # the model's own feature service
    ("user", []),  # a prefix of a view name is another view
])
def test_matching_refs(query, expected):
    assert matching_refs(query, REFS, feature_service="fraud_v1") == expected


def test_matching_refs_refuses_what_it_cannot_read():
    with pytest.raises(IntegrationError, match="view@vN:feature"):
        matching_refs("user txn", REFS)


def _graph(root, upstream_ids):
    ids = ["feature_view:user_txn@v1", "feature:user_txn@v1:amount_24h", "feature:user_txn@v1:txn_count_1h",
           "feature_service:fraud_v1@v1"]
    kinds = {"feature_view": "feature_view", "feature": "feature", "feature_service": "feature_service"}
    nodes = [{"id": i, "kind": kinds[i.split(":")[0]], "name": i.split(":", 1)[1].split("@")[0], "version": 1,
              "type": "DOUBLE", "upstream": i in upstream_ids} for i in ids]
    edges = [[ids[0], ids[1]], [ids[0], ids[2]], [ids[1], ids[3]], [ids[2], ids[3]]]
    return {"root": root, "nodes": nodes, "edges": edges}


MODELS = [{"model_id": "m-1", "name": "fraud", "model_uri": "models:/m-1", "feature_service": "fraud_v1",
           "features": ["user_txn@v1:amount_24h", "user_txn@v1:txn_count_1h"]},
          {"model_id": "m-2", "name": "counts", "model_uri": "models:/m-2", "feature_service": None,
           "features": ["user_txn@v1:txn_count_1h"]},
          {"model_id": "m-3", "name": "other", "features": ["merchant_txn@v2:n"]}]


def test_models_hang_below_the_features_they_read():
    graph = _graph("feature:user_txn@v1:amount_24h", {"feature_view:user_txn@v1"})
    sibling = "feature:user_txn@v1:txn_count_1h"  # lineage() keeps only what the root is made of and feeds
    graph["nodes"] = [n for n in graph["nodes"] if n["id"] != sibling]
    graph["edges"] = [e for e in graph["edges"] if sibling not in e]
    g = with_models(graph, MODELS)
    assert {n["id"] for n in g["nodes"] if n["kind"] == "model"} == {"model:m-1"}
    assert ["feature:user_txn@v1:amount_24h", "model:m-1"] in g["edges"]
    assert ["feature_service:fraud_v1@v1", "model:m-1"] in g["edges"]
    assert "model fraud (models:/m-1)" in render_lineage(g)


def test_a_service_lists_only_the_models_logged_with_it():
    # the service's features are upstream of it: a model that merely shares a feature is not "used by" it
    features = {"feature:user_txn@v1:amount_24h", "feature:user_txn@v1:txn_count_1h", "feature_view:user_txn@v1"}
    g = with_models(_graph("feature_service:fraud_v1@v1", features), MODELS)
    assert {n["id"] for n in g["nodes"] if n["kind"] == "model"} == {"model:m-1"}
    assert [e for e in g["edges"] if e[1].startswith("model:")] == [["feature_service:fraud_v1@v1", "model:m-1"]]


def test_feature_frame_keeps_training_order_and_fills_like_training():
    prov = Provenance(("v@v1:b", "v@v1:a", "v@v1:ok"), ("b", "a", "ok"), ("BIGINT", "DOUBLE", "BOOLEAN"),
                      (("user_id", "BIGINT"),), (), None, False, "dict")
    online = {"user_id": [1, 2], "a": [1.5, None], "ok": [True, None], "b": [3, None]}
    raw = feature_frame(online, prov)
    assert list(raw.columns) == ["b", "a", "ok"]
    assert str(raw["b"].dtype) == "float64" and raw["a"].isna().tolist() == [False, True]
    filled = feature_frame(online, prov, fill_na={"a": 0.0, "b": -1, "ok": False})
    assert filled["a"].tolist() == [1.5, 0.0] and filled["b"].tolist() == [3.0, -1.0]
    assert filled["ok"].tolist() == [True, False]
    with pytest.raises(IntegrationError, match=r"missing; the model was trained on b, a, ok"):
        feature_frame({"a": [1.0]}, prov)


def test_provenance_round_trips_through_json():
    prov = Provenance(("v@v1:a",), ("v__a",), ("DOUBLE",), (("k", "BIGINT"),), (("amount", "DOUBLE"),), "svc",
                      True, "/data/labels.parquet")
    assert Provenance.from_dict(prov.to_dict()) == prov


def test_store_location_says_what_a_store_is(tmp_path):
    assert store_location("http://127.0.0.1:9094/") == {"url": "http://127.0.0.1:9094", "repo": ""}
    (tmp_path / "fstore.yaml").write_text("project: p\n")
    assert store_location(tmp_path) == {"url": "", "repo": str(tmp_path)}
    with pytest.raises(IntegrationError, match="neither an http"):
        store_location(tmp_path / "missing")
    with pytest.raises(IntegrationError, match="not int"):
        store_location(9094)


def test_the_core_never_imports_mlflow_or_kfp():
    code = ("import sys, fsapp, fsapp.sdk, fsapp.cli, fsapp.api.app, fsapp.serve.wsgi, fsapp.registry.lineage, "
            "fsapp.integrations.training, fsapp.integrations.tracking, fsapp.integrations.steps\n"
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'mlflow', 'kfp', 'sklearn'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
