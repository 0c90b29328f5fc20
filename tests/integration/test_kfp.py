"""KFP v2 for real (no mocks): the components and the sample pipeline are
compiled to IR YAML and run with `kfp.local`'s SubprocessRunner, no cluster.

kfp pins protobuf<7 and our generated gRPC code needs protobuf 7, so kfp
lives in a venv of its own ($FSTORE_KFP_VENV, default /tmp/fstore-kfp-venv,
made once: `pip install kfp`, ~40 s). That venv also sees this environment's
packages (fstore, mlflow, scikit-learn, pyarrow...) after its own, through a
.pth file: its protobuf 6 and kfp come first, the rest is ours. The
pipelines run in that venv's python as a script; the components open an
embedded repo (one at a time: each is a subprocess)."""
import json
import os
import site
import subprocess
import sys
import textwrap
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import fsapp
from fsapp import FeatureStore

VENV = os.environ.get("FSTORE_KFP_VENV", "/tmp/fstore-kfp-venv")
KFP_REQUIREMENT = "kfp>=2.9"

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
def kfp_python():
    """The python of the kfp venv, made on first use."""
    py = os.path.join(VENV, "bin", "python")
    if not os.path.exists(py) or subprocess.run([py, "-c", "import kfp"], capture_output=True).returncode != 0:
        subprocess.run([sys.executable, "-m", "venv", VENV], check=True, capture_output=True, timeout=120)
        res = subprocess.run([py, "-m", "pip", "install", "-q", KFP_REQUIREMENT], capture_output=True, text=True,
                             timeout=900)
        if res.returncode != 0:
            pytest.fail(f"pip install {KFP_REQUIREMENT} in {VENV} failed: {(res.stderr or res.stdout)[-2000:]}")
    # our packages after the venv's own; rewritten each run: the test env may have moved
    ours = [p for p in site.getsitepackages() if os.path.isdir(p)]
    src = os.path.dirname(os.path.dirname(fsapp.__file__))
    target = subprocess.run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                            capture_output=True, text=True, check=True).stdout.strip()
    with open(os.path.join(target, "zz_fstore_test_env.pth"), "w") as f:
        f.write(f"import site; list(map(site.addsitedir, {ours!r}))\n{src}\n")
    return py


def _repo(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "fstore.yaml").write_text("project: kfptest\n")
    (repo / "defs.sql").write_text(DEFS)
    with FeatureStore(repo) as store:
        store.apply()
    return repo


def _run(py, script: str, tmp_path, timeout=240) -> dict:
    env = dict(os.environ, MLFLOW_DISABLE_TELEMETRY="true", FSTORE_KFP_PACKAGES="", FSTORE_KFP_IMAGE="python:3.11")
    res = subprocess.run([py, "-c", textwrap.dedent(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=timeout)
    assert res.returncode == 0, (res.stdout + res.stderr)[-6000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


def test_push_and_materialize_components_run_locally(kfp_python, tmp_path):
    repo = _repo(tmp_path)
    now = time.time()
    events = pa.table({"user_id": [1, 1, 2], "amount": [3.0, 4.0, 10.0],
                       "ts": pa.array([int((now - 60 + i) * 1e6) for i in range(3)], pa.timestamp("us", "UTC"))})
    pq.write_table(events, tmp_path / "events.parquet")
    out = _run(kfp_python, f"""
        import json
        from kfp import dsl, local
        from kfp.dsl import Dataset
        from fsapp.integrations.kfp import materialize, push_parquet

        @dsl.pipeline(name="ingest")
        def ingest(store: str, events_uri: str) -> str:
            events = dsl.importer(artifact_uri=events_uri, artifact_class=Dataset, reimport=False)
            pushed = push_parquet(store=store, stream="payments", events=events.output)
            done = materialize(store=store, start="", end="now", views="spend").after(pushed)
            return done.output

        local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root="kfp_out")
        run = ingest(store={str(repo)!r}, events_uri={str(tmp_path / 'events.parquet')!r})
        print(json.dumps({{"materialized": json.loads(run.output)}}))
        """, tmp_path)
    assert out["materialized"]["views"] == {"spend": 2}
    with FeatureStore(repo) as store:
        got = store.get_online_features(features=["spend:total"], entity_rows={"user_id": [1, 2]}).to_dict()
    assert got["total"] == [7.0, 10.0]


def test_sample_pipeline_compiles_to_ir_yaml_and_runs_training_set_train_log(kfp_python, tmp_path):
    import mlflow

    repo = _repo(tmp_path)
    now = time.time()
    with FeatureStore(repo) as store:
        store.push("payments", [{"user_id": u, "amount": a, "ts": now - 600 + i}
                                for i, (u, a) in enumerate([(1, 5.0), (2, 900.0), (3, 8.0), (4, 1200.0)])])
    pq.write_table(pa.table({"user_id": [1, 2, 3, 4], "is_fraud": [0, 1, 0, 1],
                             "event_timestamp": pa.array([int(now * 1e6)] * 4, pa.timestamp("us", "UTC"))}),
                   tmp_path / "labels.parquet")
    tracking = f"sqlite:///{tmp_path}/mlflow.db"
    out = _run(kfp_python, f"""
        import json, yaml
        from kfp import local
        from fsapp.integrations.kfp_sample import build_pipeline, compile_pipeline

        compile_pipeline("train_pipeline.yaml")
        ir = yaml.safe_load(open("train_pipeline.yaml"))
        local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root="kfp_out")
        run = build_pipeline()(store={str(repo)!r}, labels_uri={str(tmp_path / 'labels.parquet')!r},
                               feature_service="risk_v1", label="is_fraud", tracking_uri={tracking!r},
                               model_name="risk")
        print(json.dumps({{"model_uri": run.output, "pipeline": ir["pipelineInfo"]["name"],
                          "executors": sorted(ir["deploymentSpec"]["executors"])}}))
        """, tmp_path)
    assert out["pipeline"] == "fstore-train-log"
    assert out["executors"] == ["exec-fstore-training-set", "exec-importer", "exec-log-model", "exec-train"]

    # the training set artifact: Parquet with its lineage, also as the artifact's metadata
    (path,) = [os.path.join(d, f) for d, _, fs in os.walk(tmp_path / "kfp_out") for f in fs
               if f == "training_set"]
    assert pq.read_table(path).column("total").to_pylist() == [5.0, 900.0, 8.0, 1200.0]
    record = json.loads(pq.read_schema(path).metadata[b"fstore.training_set"])
    assert record["features"] == ["spend@v1:n_payments", "spend@v1:total"] and record["rows"] == 4
    with open(os.path.join(os.path.dirname(path), "executor_output.json")) as f:  # what KFP records
        (artifact,) = json.load(f)["artifacts"]["training_set"]["artifacts"]
    assert artifact["metadata"]["features"] == record["features"]
    assert artifact["metadata"]["feature_service"] == "risk_v1" and artifact["metadata"]["label"] == "is_fraud"
    assert artifact["metadata"]["label_source"] == str(tmp_path / "labels.parquet")

    # the logged model is in MLflow, tagged, and found by its features
    mlflow.set_tracking_uri(tracking)
    from fsapp.integrations import mlflow as fsmlflow

    (model,) = fsmlflow.models_using("spend:total", tracking_uri=tracking)
    assert model["model_uri"] == out["model_uri"] and model["name"] == "risk"
    assert model["feature_service"] == "risk_v1"
