"""`fstore serve` configured from fstore.yaml (issue 14, repro 6): the port
and the other options come from the `online:` section when no flag is given
(a flag wins), API keys from the keys file `auth: api_keys_file:` names (or
`--api-keys-file`), and a wrong setting or keys file stops it at start in
one line naming the file and line."""
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

DEFS = """
CREATE ENTITY account (account_id BIGINT);
CREATE STREAM payments (account_id BIGINT, amount DOUBLE, ts TIMESTAMP) WITH (timestamp = 'ts');
CREATE FEATURE VIEW account_totals AS
SELECT account_id, count(*) OVER lifetime() AS n_payments FROM payments;
"""
READ = {"features": ["account_totals:n_payments"], "entities": {"account_id": [1]}}
PUSH = {"stream": "payments", "rows": [{"account_id": 1, "amount": 2.0, "ts": 1_764_000_000}]}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_repo(root, yaml_text: str):
    from fsapp.registry.repo import Repo

    root.mkdir()
    (root / "fstore.yaml").write_text("project: configtest\n" + yaml_text)
    (root / "defs.sql").write_text(DEFS)
    Repo(root).apply()
    return root


@pytest.fixture
def start_serve(tmp_path):
    """start_serve(root, port, *flags): `fstore serve --repo root *flags`,
    waiting until http://127.0.0.1:port answers; stopped with SIGTERM after."""
    started = []

    def start(root, port, *flags):
        log = open(tmp_path / f"serve-{len(started)}.log", "w+")
        if "--grpc-port" not in flags:  # two servers may run at once here: not both on gRPC's default port
            flags = (*flags, "--grpc-port", str(free_port()))
        proc = subprocess.Popen([sys.executable, "-m", "fsapp.cli", "serve", "--repo", str(root), *flags],
                                stdout=log, stderr=subprocess.STDOUT)
        started.append((proc, log))
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).read()
                log.seek(0)
                return log.read()
            except (urllib.error.URLError, ConnectionError, OSError):
                if proc.poll() is not None:
                    log.seek(0)
                    pytest.fail("fstore serve exited: " + log.read())
                time.sleep(0.2)
        log.seek(0)
        pytest.fail(f"fstore serve did not answer on port {port} in 90 s: " + log.read())

    yield start
    for proc, log in started:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
        log.close()


def call(url, body=None, key=None):
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    req = urllib.request.Request(url, data=json.dumps(body).encode() if body is not None else None, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_serve_takes_port_and_api_keys_from_fstore_yaml_and_flags_win(tmp_path, start_serve):
    port = free_port()
    root = make_repo(tmp_path / "repo", f"online:\n  port: {port}\n  workers: 1\n  fsync: never\n"
                                        "auth:\n  api_keys_file: secrets/api_keys.txt\n")
    (root / "secrets").mkdir()
    (root / "secrets" / "api_keys.txt").write_text("# who may do what\nreader-key read\nwriter-key write\n")
    log = start_serve(root, port)  # no --port: fstore.yaml's
    assert f"2 API key(s) from {root / 'secrets' / 'api_keys.txt'}" in log
    base = f"http://127.0.0.1:{port}"
    assert call(base + "/health")[0] == 200  # open
    status, body = call(base + "/api/v1/features/online", READ)
    assert status == 401 and "Bearer" in body["description"]
    assert call(base + "/api/v1/features/online", READ, key="reader-key")[0] == 200
    assert call(base + "/api/v1/push", PUSH, key="reader-key")[0] == 403
    assert call(base + "/api/v1/push", PUSH, key="writer-key")[0] == 200

    # flags win over the file: another port, another keys file (relative to where the command runs)
    other = tmp_path / "other_keys.txt"
    other.write_text("flag-key admin\n")
    root2 = make_repo(tmp_path / "repo2", f"online:\n  port: {port}\n  workers: 1\n"
                                          "auth:\n  api_keys_file: secrets/api_keys.txt\n")
    port2 = free_port()
    start_serve(root2, port2, "--port", str(port2), "--api-keys-file", str(other))
    base2 = f"http://127.0.0.1:{port2}"
    assert call(base2 + "/api/v1/features/online", READ, key="reader-key")[0] == 401
    assert call(base2 + "/api/v1/features/online", READ, key="flag-key")[0] == 200


def serve_fails(root, *flags):
    res = subprocess.run([sys.executable, "-m", "fsapp.cli", "serve", "--repo", str(root), *flags],
                         capture_output=True, text=True, timeout=60)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and not res.stdout, res.stdout + res.stderr
    return res.returncode, lines[0]


def test_a_wrong_setting_or_keys_file_stops_serve_at_start_in_one_line(tmp_path):
    root = make_repo(tmp_path / "repo", "online:\n  port: 99999\n")
    assert serve_fails(root) == (1, f"fstore serve: {root / 'fstore.yaml'} line 3: online.port must be an "
                                    "integer 1..65535, got 99999")
    (root / "fstore.yaml").write_text("project: configtest\nauth:\n  api_keys:\n    s3cret: admin\n")
    code, line = serve_fails(root)
    assert code == 1 and f"{root / 'fstore.yaml'} line 3: auth.api_keys:" in line and "keys file" in line
    (root / "fstore.yaml").write_text("project: configtest\nauth:\n  api_keys_file: keys.txt\n")
    (root / "keys.txt").write_text("good read\nbad-line\n")
    assert serve_fails(root) == (1, f"fstore serve: {root / 'keys.txt'} line 2: expected 'TOKEN SCOPE[,SCOPE]' "
                                    "(scopes: read, write, admin)")
    code, line = serve_fails(root, "--api-keys-file", str(tmp_path / "missing.txt"))
    assert code == 1 and f"{tmp_path / 'missing.txt'}: cannot read the API keys file" in line
    assert serve_fails(root, "--port", "0") == (2, "fstore serve: --port must be an integer 1..65535, got 0")


def test_a_worker_count_that_would_fork_the_machine_out_of_memory_is_refused(tmp_path):
    # `online.workers: 1000` was taken: gunicorn forked workers of ~80 MB each until memory ran out
    from fsapp.cli import _workers

    hi = max(32, 16 * (os.cpu_count() or 1))
    root = make_repo(tmp_path / "repo", "online:\n  workers: 100000\n")
    code, line = serve_fails(root)
    assert code == 1 and line.startswith(f"fstore serve: {root / 'fstore.yaml'} line 3: online.workers must be an "
                                         f"integer 1..{hi} (16 a core") and line.endswith("got 100000")
    (root / "fstore.yaml").write_text("project: configtest\n")
    code, line = serve_fails(root, "--grpc-workers", str(hi + 1))
    assert code == 2 and line.startswith(f"fstore serve: --grpc-workers must be an integer 1..{hi}")
    assert _workers(hi) is None and _workers(1) is None and _workers(True) and _workers(0)
