"""MLflow for real (no mocks), on a sqlite tracking store in a temp dir:
what `log_training_set` and `log_model` record, the wrapped model looking
its features up in an embedded repo with the training-time null handling,
errors that say what to fix, and the logged models in fstore's lineage
(REST API, CLI, Python).

The served path — a real `fstore serve`, a real `mlflow models serve
--env-manager local`, a push that changes a prediction, a request without
the key answered 400 — is the README's "Train, log, serve" section, run
verbatim by test_readme_train_log_serve.py."""
import json
import os
import time

import pytest

mlflow = pytest.importorskip("mlflow")  # the `test` extra installs mlflow-skinny; a bare install skips

from falcon import testing  # noqa: E402
from sklearn.tree import DecisionTreeClassifier  # noqa: E402

from fsapp import FeatureStore  # noqa: E402
from fsapp.cli import main as cli  # noqa: E402
from fsapp.api import EngineBackend, create_app  # noqa: E402
from fsapp.integrations import IntegrationError  # noqa: E402
from fsapp.integrations import mlflow as fsmlflow  # noqa: E402
from fsapp.integrations.tracking import model_lister  # noqa: E402
from fsapp.repo_lock import RepoBusy  # noqa: E402

DEFS = """
CREATE ENTITY account (user_id BIGINT);
CREATE STREAM payments (user_id BIGINT, amount DOUBLE, ts TIMESTAMP)
    WITH (timestamp = 'ts', allowed_lateness = '1h');
CREATE FEATURE VIEW spend AS
SELECT user_id, count(*) OVER lifetime() AS n_payments, sum(amount) OVER lifetime() AS total
FROM payments;
CREATE FEATURE SERVICE risk_v1 AS (spend:n_payments, spend:total);
CREATE REQUEST SOURCE payment_request (amount DOUBLE);
CREATE ON DEMAND FEATURE VIEW payment_context AS
SELECT amount / spend.total AS share_of_total FROM payment_request, spend;
"""


@pytest.fixture(scope="module")
def tracking(tmp_path_factory):
    """A sqlite tracking store for the module (creating its tables takes seconds); no telemetry."""
    # mlflow.set_experiment also sets MLFLOW_EXPERIMENT_ID in os.environ: restored too
    saved = {k: os.environ.get(k) for k in ("MLFLOW_DISABLE_TELEMETRY", "MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_ID")}
    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root}/mlflow.db"
    os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
    os.environ["MLFLOW_TRACKING_URI"] = uri
    mlflow.set_tracking_uri(uri)
    # artifacts in the temp dir: a sqlite store's default experiment writes them under ./mlruns
    mlflow.set_experiment(experiment_id=mlflow.create_experiment("fstore-tests", artifact_location=str(root / "a")))
    yield uri
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture
def repo(tmp_path):
    """A repo with spend history: big spenders (2, 4, 6) are fraud; user 7 has no events."""
    root = tmp_path / "repo"
    root.mkdir()
    (root / "fstore.yaml").write_text("project: mlflowtest\n")
    (root / "defs.sql").write_text(DEFS)
    now = time.time()
    rows = []
    for user, amounts in {1: [5, 7], 2: [500, 900], 3: [20], 4: [1500], 5: [40, 30], 6: [800, 700]}.items():
        rows += [{"user_id": user, "amount": float(a), "ts": now - 3600 + i} for i, a in enumerate(amounts)]
    with FeatureStore(root) as store:
        store.apply()
        store.push("payments", rows)
    labels = {"user_id": [1, 2, 3, 4, 5, 6, 7], "event_timestamp": [now] * 7, "is_fraud": [0, 1, 0, 1, 0, 1, 0]}
    return root, labels


def test_logged_run_and_model_carry_the_lineage_and_the_model_reads_its_features(tracking, repo, port_factory):
    root, labels = repo
    with FeatureStore(root) as store:
        train = store.get_historical_features(labels, feature_service="risk_v1")
        with mlflow.start_run() as run:
            record = fsmlflow.log_training_set(train, label="is_fraud")
            X, y = fsmlflow.training_data(train, label="is_fraud", fill_na=0.0)
            assert list(X.columns) == ["n_payments", "total"] and X["total"].tolist()[-1] == 0.0  # user 7 filled
            model = DecisionTreeClassifier(max_depth=1, random_state=0).fit(X, y)
            info = fsmlflow.log_model(model, training_set=train, store=store, name="risk", fill_na=0.0)

    logged = mlflow.get_run(run.info.run_id)
    assert logged.data.tags["fstore.features"] == "spend@v1:n_payments,spend@v1:total"
    assert logged.data.tags["fstore.columns"] == "n_payments,total"
    assert json.loads(logged.data.tags["fstore.schema"])["total"] == "double"
    params = logged.data.params
    assert params["fstore.feature_service"] == "risk_v1" and params["fstore.label"] == "is_fraud"
    assert params["fstore.rows"] == "7" and params["fstore.label_source"] == "dict"
    assert params["fstore.time_start"] == params["fstore.time_end"] == record["time_start"]
    (dataset_input,) = logged.inputs.dataset_inputs
    assert dataset_input.dataset.name == "risk_v1" and dataset_input.dataset.digest
    assert logged.data.tags["fstore.dataset_digest"] == dataset_input.dataset.digest
    artifact = mlflow.artifacts.load_dict(f"runs:/{run.info.run_id}/fstore/training_set.json")
    assert artifact["features"] == record["features"] and artifact["provenance"]["keys"] == [["user_id", "BIGINT"]]

    entity = mlflow.get_logged_model(info.model_id)
    assert entity.tags["fstore.lineage"] == "1" and entity.tags["fstore.feature_service"] == "risk_v1"
    assert entity.tags["fstore.store"] == str(root.resolve()) and entity.params["fstore.rows"] == "7"

    # the store is closed: the loaded model opens the repo itself (one writer per repo)
    loaded = mlflow.pyfunc.load_model(info.model_uri)
    assert loaded.metadata.get_input_schema().input_names() == ["user_id"]
    assert list(loaded.predict({"user_id": [1, 2, 999]})) == [0, 1, 0]  # 999: no features, filled as in training
    with pytest.raises(RepoBusy, match="has this repo.s store open"):
        FeatureStore(root).engine  # embedded: the model's process is now the repo's one writer

    # pointed elsewhere when loading (as MLFLOW_PYFUNC_INFERENCE_CONFIG does for `mlflow models serve`)
    elsewhere = mlflow.pyfunc.load_model(info.model_uri, model_config={"fstore_url": f"http://127.0.0.1:{port_factory()}"})
    with pytest.raises(mlflow.exceptions.MlflowException, match="did not answer") as err:
        elsewhere.predict({"user_id": [1]})
    assert err.value.error_code == "TEMPORARILY_UNAVAILABLE"  # a 503 from the scoring server
    with pytest.raises(mlflow.exceptions.MlflowException, match="user_id"):
        loaded.predict({"amount": [1.0]})


def test_bad_uses_say_what_to_fix(tracking, repo, capsys, monkeypatch):
    root, labels = repo
    with FeatureStore(root) as store:
        train = store.get_historical_features(labels, features=["spend:total"])
        with pytest.raises(IntegrationError, match="active MLflow run"):
            fsmlflow.log_training_set(train, label="is_fraud")
        with pytest.raises(IntegrationError, match=r"no feature service 'risk_v2' .*registered services: risk_v1"):
            fsmlflow.log_model(DecisionTreeClassifier(), feature_service="risk_v2", store=store)
        with pytest.raises(IntegrationError, match="neither an http"):
            fsmlflow.log_model(DecisionTreeClassifier(), feature_service="risk_v1", store="/nowhere")
        with pytest.raises(IntegrationError, match="training_set= .* or feature_service="):
            fsmlflow.log_model(DecisionTreeClassifier())
        with mlflow.start_run():
            with pytest.raises(IntegrationError, match="label 'fraud' is not a column"):
                fsmlflow.log_training_set(train, label="fraud")
            with pytest.raises(IntegrationError, match="not an fstore training set"):
                fsmlflow.log_training_set(train.to_arrow())
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    assert cli(["lineage", "spend", "--models", "--repo", str(root)]) == 1
    assert "--models needs an MLflow tracking URI" in capsys.readouterr().err
    assert cli(["lineage", "spend", "--models", "--repo", str(root), "--tracking-uri", "nosuchscheme://tracking"]) == 1
    assert capsys.readouterr().err.startswith("error: could not list the models logged at nosuchscheme://tracking: ")


def test_lineage_lists_the_models_that_read_a_feature(tracking, repo, capsys, monkeypatch):
    root, labels = repo
    with FeatureStore(root) as store:
        train = store.get_historical_features(labels, feature_service="risk_v1")
        X, y = fsmlflow.training_data(train, label="is_fraud", fill_na=0.0)
        with mlflow.start_run():
            by_service = fsmlflow.log_model(DecisionTreeClassifier().fit(X, y), feature_service="risk_v1",
                                            store=store, name="by_service")
        one = store.get_historical_features(labels, features=["spend:n_payments"])
        with mlflow.start_run():
            counts_only = fsmlflow.log_model(DecisionTreeClassifier().fit(*fsmlflow.training_data(one, "is_fraud",
                                                                                                  fill_na=0)),
                                             training_set=one, store=store, name="counts_only")

        # Python
        users = {m["name"] for m in fsmlflow.models_using("spend:total")}
        assert "by_service" in users and "counts_only" not in users
        assert {m["name"] for m in fsmlflow.models_using("spend")} >= {"by_service", "counts_only"}
        assert fsmlflow.models_using("spend@v2:total") == []

        # REST API (the worker builds the same app with fstore.yaml's mlflow.tracking_uri)
        api = testing.TestClient(create_app(EngineBackend(store.engine), models=model_lister(tracking)))
        graph = api.simulate_get("/api/v1/lineage/spend:n_payments").json
        ids = {n["id"] for n in graph["nodes"]}
        assert {f"model:{by_service.model_id}", f"model:{counts_only.model_id}"} <= ids
        assert ["feature:spend@v1:n_payments", f"model:{counts_only.model_id}"] in graph["edges"]
        assert ["feature_service:risk_v1@v1", f"model:{by_service.model_id}"] in graph["edges"]
        assert not any(i.startswith("model:") for i in {n["id"] for n in api.simulate_get(
            "/api/v1/lineage/spend:n_payments", params={"models": "false"}).json["nodes"]})
        broken = testing.TestClient(create_app(EngineBackend(store.engine), models=model_lister("nosuchscheme://tracking")))
        res = broken.simulate_get("/api/v1/lineage/spend:total")
        assert res.status_code == 200 and res.json["models_error"].startswith(
            "could not list the models logged at nosuchscheme://tracking: ")

    # CLI, the tracking URI from fstore.yaml
    (root / "fstore.yaml").write_text(f"project: mlflowtest\nmlflow:\n  tracking_uri: {tracking}\n")
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    assert cli(["lineage", "spend:total", "--models", "--repo", str(root)]) == 0
    out = capsys.readouterr().out
    assert f"model by_service ({by_service.model_uri})" in out and "counts_only" not in out


def test_on_demand_features_take_their_request_columns_from_the_request(tracking, repo):
    root, labels = repo
    labels = {**labels, "amount": [50.0, 10.0, 40.0, 30.0, 100.0, 20.0, 5.0]}  # the payment being scored
    with FeatureStore(root) as store:
        train = store.get_historical_features(labels, features=["spend:total", "payment_context:share_of_total"])
        assert train.provenance.request_columns == (("amount", "DOUBLE"),)
        X, y = fsmlflow.training_data(train, label="is_fraud", fill_na=0.0)
        with mlflow.start_run():
            info = fsmlflow.log_model(DecisionTreeClassifier(max_depth=1, random_state=0).fit(X, y),
                                      training_set=train, store=store, name="with_request", fill_na=0.0)
    loaded = mlflow.pyfunc.load_model(info.model_uri)
    assert loaded.metadata.get_input_schema().input_names() == ["user_id", "amount"]
    model = loaded.unwrap_python_model()
    frame = model.lookup(__import__("pandas").DataFrame({"user_id": [1, 4], "amount": [6.0, 150.0]}))
    assert frame.columns.tolist() == ["total", "share_of_total"]
    assert frame["share_of_total"].tolist() == [0.5, 0.1]  # 6 / 12 and 150 / 1500, computed at read time
    assert len(loaded.predict({"user_id": [1, 4], "amount": [6.0, 150.0]})) == 2
    with pytest.raises(mlflow.exceptions.MlflowException, match="amount"):
        loaded.predict({"user_id": [1]})
