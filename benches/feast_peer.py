"""Feast's Python feature server as a peer for bench_serving, reproducibly.

Feast is never installed into our environment (it pins numpy/pandas/pyarrow
versions of its own): it lives in a separate venv, created on demand
(default /tmp/feast-venv, or $FSTORE_FEAST_VENV). The feature repo is the
same data as ours: one entity `user_id`, a FileSource Parquet with 50 DOUBLE
features `f0..f49`, a FeatureView `fv50`, SQLite online store; `feast apply`
then `feast materialize`. The server runs at its best settings, not its
defaults: `feast serve --workers 2 --max-requests 0 --no-access-log`
(its default recycles a worker every 1,000 requests).

    python -m benches.feast_peer /tmp/feast-repo     # set up + print the server command
"""
from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import time
from pathlib import Path

VENV = os.environ.get("FSTORE_FEAST_VENV", "/tmp/feast-venv")
INSTALL_TIMEOUT_S = 900


class FeastUnavailable(RuntimeError):
    """Why the Feast peer could not run (goes into the bench table as a skip)."""


def _bin(name: str) -> str:
    return os.path.join(VENV, "bin", name)


def ensure_venv(log=sys.stderr) -> str:
    """The venv's python with feast importable; creates the venv if needed."""
    py = _bin("python")
    # grpcio: Feast's own generated gRPC stubs talk to fstore's gRPC port in the compatibility tests
    if os.path.exists(py) and subprocess.run([py, "-c", "import feast, grpc"], capture_output=True).returncode == 0:
        return py
    print(f"# feast_peer: creating {VENV} and installing feast (separate venv; a few minutes)", file=log, flush=True)
    try:
        if not os.path.exists(py):
            subprocess.run([sys.executable, "-m", "venv", VENV], check=True, capture_output=True, timeout=120)
        r = subprocess.run([py, "-m", "pip", "install", "-q", "feast", "grpcio"], capture_output=True, text=True,
                           timeout=INSTALL_TIMEOUT_S)
    except (subprocess.SubprocessError, OSError) as e:
        raise FeastUnavailable(f"could not create the Feast venv {VENV}: {e}") from e
    if r.returncode != 0:
        raise FeastUnavailable("pip install feast failed in a separate venv: " + (r.stderr or r.stdout)[-300:])
    return py


FEATURES_PY = """
from datetime import timedelta
from feast import Entity, FeatureView, Field, FileSource, ValueType
from feast.types import Float64, Int64

user = Entity(name="user", join_keys=["user_id"], value_type=ValueType.INT64)
src = FileSource(name="fv50_source", path="{parquet}", timestamp_field="ts")
fv50 = FeatureView(
    name="fv50", entities=[user], ttl=timedelta(days=3650), online=True, source=src,
    schema=[Field(name="user_id", dtype=Int64)] + [Field(name=f"f{{i}}", dtype=Float64) for i in range({n_features})],
)
"""

STORE_YAML = """project: fstore_bench
registry: {root}/data/registry.db
provider: local
online_store:
  type: sqlite
  path: {root}/data/online.db
offline_store:
  type: file
entity_key_serialization_version: 3
"""


def write_parquet(path: Path, rows: list[dict]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq
    t = pa.Table.from_pylist(rows)
    ts = pa.array([dt.datetime.fromtimestamp(r["ts"], tz=dt.timezone.utc) for r in rows],
                  type=pa.timestamp("us", tz="UTC"))
    t = t.set_column(t.schema.get_field_index("ts"), "ts", ts)
    pq.write_table(t, path)


def setup_repo(root: str | Path, rows: list[dict], n_features: int, log=sys.stderr, extra_py: str = "") -> str:
    """Feature repo at `root` with `rows` (dicts with user_id, f0.., ts as
    epoch seconds) and `extra_py` definitions (e.g. on-demand views); feast
    apply + materialize. Returns the venv python."""
    py = ensure_venv(log)
    root = Path(root).resolve()
    (root / "data").mkdir(parents=True, exist_ok=True)
    parquet = root / "data" / "fv50.parquet"
    write_parquet(parquet, rows)
    (root / "feature_store.yaml").write_text(STORE_YAML.format(root=root))
    (root / "features.py").write_text(FEATURES_PY.format(parquet=parquet, n_features=n_features) + extra_py)
    feast = _bin("feast")
    t_min = min(r["ts"] for r in rows) - 60
    t_max = max(r["ts"] for r in rows) + 60
    fmt = lambda t: dt.datetime.fromtimestamp(t, tz=dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    for cmd in (["apply"], ["materialize", fmt(t_min), fmt(t_max)]):
        r = subprocess.run([feast, *cmd], cwd=root, capture_output=True, text=True, timeout=600)
        if r.returncode != 0:
            raise FeastUnavailable(f"feast {cmd[0]} failed: " + (r.stderr or r.stdout)[-400:])
    return py


def start_server(root: str | Path, port: int, workers: int = 2, log_path: str | None = None) -> subprocess.Popen:
    root = Path(root).resolve()
    log = open(log_path or root / "serve.log", "w")
    return subprocess.Popen([_bin("feast"), "serve", "--host", "127.0.0.1", "--port", str(port),
                             "--workers", str(workers), "--max-requests", "0", "--max-requests-jitter", "0",
                             "--no-access-log"],
                            cwd=root, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


INPROC_PY = """
import json, sys, time
from feast import FeatureStore
store = FeatureStore(repo_path=sys.argv[1])
feats = [f"fv50:f{i}" for i in range(int(sys.argv[2]))]
out = {}
for n, iters in ((1, int(sys.argv[3])), (100, max(20, int(sys.argv[3]) // 10))):
    rows = [{"user_id": u} for u in range(n)]
    for _ in range(5):
        store.get_online_features(features=feats, entity_rows=rows).to_dict()
    ts = []
    for _ in range(iters):
        t = time.perf_counter_ns()
        store.get_online_features(features=feats, entity_rows=rows).to_dict()
        ts.append(time.perf_counter_ns() - t)
    out[n] = ts
print(json.dumps(out))
"""


def inprocess_lookup_ns(root: str | Path, n_features: int, iters: int) -> dict[int, list[int]]:
    """Feast's in-process `FeatureStore.get_online_features(...).to_dict()`, ns per call."""
    r = subprocess.run([_bin("python"), "-c", INPROC_PY, str(Path(root).resolve()), str(n_features), str(iters)],
                       capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        raise FeastUnavailable("Feast in-process lookup failed: " + r.stderr[-400:])
    return {int(k): v for k, v in json.loads(r.stdout.strip().splitlines()[-1]).items()}


if __name__ == "__main__":
    target = sys.argv[1] if len(sys.argv) > 1 else "/tmp/feast-repo"
    now = time.time()
    rows = [dict({"user_id": u, "ts": now - 60}, **{f"f{i}": u + i / 100 for i in range(50)}) for u in range(1000)]
    setup_repo(target, rows, 50)
    print(f"ready: cd {target} && {_bin('feast')} serve --workers 2 --max-requests 0 --no-access-log")
