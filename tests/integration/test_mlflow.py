"""MLflow for real (no mocks): a sqlite tracking store in a temp dir, a
model logged with `fsapp.integrations.mlflow.log_model`, served by the real
`mlflow models serve --env-manager local` on a free port, reading its
features from a real `fstore serve`. A push that changes a feature changes
the prediction; a request without the key is a 400 that says what to send;
the logged model shows up in fstore's lineage (API, CLI, Python)."""
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

mlflow = pytest.importorskip("mlflow")  # the `test` extra installs mlflow-skinny; a bare install skips

from sklearn.tree import DecisionTreeClassifier  # noqa: E402

from fsapp import Client, FeatureStore  # noqa: E402
from fsapp.integrations import IntegrationError  # noqa: E402
from fsapp.integrations import mlflow as fsmlflow  # noqa: E402


DEFS = """
CREATE ENTITY account (user_id BIGINT);
CREATE STREAM payments (user_id BIGINT, amount DOUBLE, ts TIMESTAMP)
    WITH (timestamp = 'ts', allowed_lateness = '1h');
CREATE FEATURE VIEW spend AS
SELECT user_id, count(*) OVER lifetime() AS n_payments, sum(amount) OVER lifetime() AS total
FROM payments;
CREATE FEATURE SERVICE risk_v1 AS (spend:n_payments, spend:total);
"""


@pytest.fixture(scope="module")
def tracking(tmp_path_factory):
    """A sqlite tracking store for the module (creating its tables takes seconds); no telemetry."""
    saved = {k: os.environ.get(k) for k in ("MLFLOW_DISABLE_TELEMETRY", "MLFLOW_TRACKING_URI")}
    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow')}/mlflow.db"
    os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"  # inherited by the servers started below
    os.environ["MLFLOW_TRACKING_URI"] = uri
    mlflow.set_tracking_uri(uri)
    yield uri
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def _history(now):
    """Big spenders are fraud: users 2, 4, 6 spent > 1000, users 1, 3, 5 < 100."""
    rows = []
    for user, amounts in {1: [5, 7], 2: [500, 900], 3: [20], 4: [1500], 5: [40, 30], 6: [800, 700]}.items():
        rows += [{"user_id": user, "amount": float(a), "ts": now - 3600 + i} for i, a in enumerate(amounts)]
    labels = {"user_id": [1, 2, 3, 4, 5, 6], "event_timestamp": [now] * 6, "is_fraud": [0, 1, 0, 1, 0, 1]}
    return rows, labels


def _invoke(port, body):
    req = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


@pytest.fixture
def mlflow_serve(port_factory, tmp_path):
    """mlflow_serve(model_uri) -> port: the real `mlflow models serve --env-manager local`."""
    started = []

    def start(model_uri: str) -> int:
        port = port_factory()
        env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
        log = open(tmp_path / "mlflow-serve.log", "w+")
        proc = subprocess.Popen([sys.executable, "-m", "mlflow", "models", "serve", "-m", model_uri, "--env-manager",
                                 "local", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                                stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        started.append((proc, log))
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2).read()
                return port
            except (urllib.error.URLError, ConnectionError, OSError):
                if proc.poll() is not None:
                    break
                time.sleep(0.3)
        log.seek(0)
        pytest.fail("mlflow models serve did not answer /ping: " + log.read()[-3000:])

    yield start
    for proc, log in started:
        if proc.poll() is None:  # mlflow execs uvicorn in its own session: stop the whole group
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        log.close()


def test_served_model_predicts_from_live_features_and_follows_a_push(tracking, serve_repo, mlflow_serve, tmp_path):
    base, _, _ = serve_repo(DEFS, f"mlflow:\n  tracking_uri: {tracking}\n")
    client = Client(base)
    now = time.time()
    rows, labels = _history(now)
    client.push("payments", rows)
    train = client.get_historical_features(labels, feature_service="risk_v1")

    with mlflow.start_run() as run:
        record = fsmlflow.log_training_set(train, label="is_fraud")
        X, y = fsmlflow.training_data(train, label="is_fraud", fill_na=0.0)
        assert list(X.columns) == ["n_payments", "total"]
        model = DecisionTreeClassifier(max_depth=1, random_state=0).fit(X, y)
        info = fsmlflow.log_model(model, training_set=train, store=base, name="risk", fill_na=0.0)

    # what was logged where (docs/integrations.md)
    logged = mlflow.get_run(run.info.run_id)
    assert logged.data.tags["fstore.features"] == "spend@v1:n_payments,spend@v1:total"
    assert logged.data.params["fstore.feature_service"] == "risk_v1"
    assert logged.data.params["fstore.rows"] == "6" and logged.data.params["fstore.label"] == "is_fraud"
    assert record["time_start"] == record["time_end"] and record["time_start"].endswith("Z")
    assert json.loads(logged.data.tags["fstore.schema"])["total"] == "double"
    (dataset_input,) = logged.inputs.dataset_inputs
    assert dataset_input.dataset.name == "risk_v1" and dataset_input.dataset.digest
    assert logged.data.tags["fstore.dataset_digest"] == dataset_input.dataset.digest
    model_entity = mlflow.get_logged_model(info.model_id)
    assert model_entity.tags["fstore.lineage"] == "1" and model_entity.tags["fstore.store"] == base

    port = mlflow_serve(info.model_uri)
    status, body = _invoke(port, {"inputs": {"user_id": [1, 2, 999]}})
    assert status == 200, body
    assert body["predictions"] == [0, 1, 0]  # 999 has no features: filled with 0.0, as in training

    client.push("payments", [{"user_id": 1, "amount": 5000.0, "ts": time.time() - 1}])
    status, body = _invoke(port, {"dataframe_records": [{"user_id": 1}, {"user_id": 3}]})
    assert status == 200, body
    assert body["predictions"] == [1, 0]  # user 1's live total moved past the split

    status, body = _invoke(port, {"inputs": {"account": [1]}})
    assert status == 400, body
    assert "user_id" in body["message"]

    # reverse lineage: Python, CLI, REST API
    (found,) = fsmlflow.models_using("spend:total")
    assert found["model_id"] == info.model_id and found["uses"] == ["spend@v1:total"]
    assert fsmlflow.models_using("spend@v2:total") == []
    graph = client.lineage("spend:total")
    assert f"model:{info.model_id}" in {n["id"] for n in graph["nodes"]}
    assert ["feature:spend@v1:total", f"model:{info.model_id}"] in graph["edges"]
    assert "model:" not in json.dumps(client._json("GET", "/api/v1/lineage/spend:total?models=false")["nodes"])
    out = subprocess.run([sys.executable, "-m", "fsapp.cli", "lineage", "risk_v1", "--models", "--repo",
                          str(tmp_path / "repo")], capture_output=True, text=True, timeout=120)  # serve_repo's repo
    assert out.returncode == 0, out.stderr
    assert f"model risk ({info.model_uri})" in out.stdout


def test_embedded_model_reads_the_repo_and_bad_uses_say_what_to_fix(tracking, tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "fstore.yaml").write_text("project: mlflowtest\n")
    (repo / "defs.sql").write_text(DEFS)
    now = time.time()
    rows, labels = _history(now)
    with FeatureStore(repo) as store:
        store.apply()
        store.push("payments", rows)
        train = store.get_historical_features(labels, features=["spend:total"])

        with pytest.raises(IntegrationError, match="active MLflow run"):
            fsmlflow.log_training_set(train, label="is_fraud")
        with pytest.raises(IntegrationError, match="registered services: risk_v1"):
            fsmlflow.log_model(DecisionTreeClassifier(), feature_service="risk_v2", store=store)

        X, y = fsmlflow.training_data(train, label="is_fraud")  # no fill: a missing total stays NaN
        with mlflow.start_run():
            with pytest.raises(IntegrationError, match="label 'fraud' is not a column"):
                fsmlflow.log_training_set(train, label="fraud")
            with pytest.raises(IntegrationError, match="not an fstore training set"):
                fsmlflow.log_training_set(train.to_arrow())
            info = fsmlflow.log_model(DecisionTreeClassifier(max_depth=1, random_state=0).fit(X, y),
                                      training_set=train, store=str(repo), name="embedded")
    # the store is closed here: the loaded model opens the repo itself (one writer per repo)
    loaded = mlflow.pyfunc.load_model(info.model_uri)
    assert list(loaded.predict({"user_id": [1, 4]})) == [0, 1]
    with pytest.raises(mlflow.exceptions.MlflowException, match="user_id"):
        loaded.predict({"amount": [1.0]})
    assert [m["name"] for m in fsmlflow.models_using("spend") if m["model_id"] == info.model_id] == ["embedded"]
