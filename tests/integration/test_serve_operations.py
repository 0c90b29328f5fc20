"""Operating `fstore serve` (issue 14): one server per repo, a supervisor that
never gives up, and one clear line (not a traceback or gunicorn's HTML) for
what a person can fix."""
import json
import os
import re
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
CREATE STREAM payments (account_id BIGINT, amount DOUBLE, ts TIMESTAMP)
    WITH (timestamp = 'ts', allowed_lateness = '1h');
CREATE FEATURE VIEW account_totals AS
SELECT account_id, count(*) OVER lifetime() AS n_payments FROM payments;
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(url, body, timeout=30):
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read())


def serve(args, **kw):
    return subprocess.run([sys.executable, "-m", "fsapp.cli", "serve", *args], capture_output=True, text=True,
                          timeout=60, **kw)


def test_a_second_server_on_a_served_repo_refuses_in_one_line(serve_repo, tmp_path):
    """Repro 2: a second `fstore serve` connected to the first's socket, said
    "engine ready", then crash-looped its own engine, leaving temporary table
    files. It now refuses at once, naming the running server; an embedded
    FeatureStore refuses the same way."""
    from fsapp import FeatureStore
    from fsapp.repo_lock import RepoBusy

    base, proc, log = serve_repo(DEFS)
    root = tmp_path / "repo"
    t0 = time.monotonic()
    res = serve(["--repo", str(root), "--port", str(free_port())])
    assert res.returncode == 1 and time.monotonic() - t0 < 30
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    port = base.rsplit(":", 1)[1]
    assert f"pid {proc.pid}" in lines[0] and f":{port}" in lines[0] and "ready" not in res.stdout + res.stderr
    assert not [p for p in (root / "data" / "engine" / "online").iterdir() if ".tmp." in p.name]
    with pytest.raises(RepoBusy, match=f"fstore serve. \\(pid {proc.pid}, http://127.0.0.1:{port}\\).*"
                                       f"from the command line: --url http://127.0.0.1:{port}"):
        FeatureStore(root).get_online_features(features=["account_totals:n_payments"], entity_rows=[{"account_id": 1}])
    post(base + "/api/v1/push", {"stream": "payments", "rows": [{"account_id": 1, "amount": 1.0, "ts": time.time()}]})


def test_stale_temporary_table_files_of_a_dead_engine_are_removed_at_start(tmp_path):
    from fsapp import FeatureStore
    from fsapp.registry.repo import Repo

    root = tmp_path / "r"
    root.mkdir()
    (root / "fstore.yaml").write_text("project: r\n")
    (root / "defs.sql").write_text(DEFS)
    Repo(root).apply()
    online = root / "data" / "engine" / "online"
    online.mkdir(parents=True)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    stale = online / f"account_totals@v1.fst.tmp.{dead}.3"
    stale.write_bytes(b"x" * 1000)
    mine = online / f"account_totals@v1.fst.tmp.{os.getpid()}.99"  # a live process's: left alone
    mine.write_bytes(b"y")
    with FeatureStore(root, fsync="never") as store:
        store.health()
    assert not stale.exists() and mine.exists()


def _children(pid: int, needle: str) -> list[int]:
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{d}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if ppid == pid and needle in cmd:
            out.append(int(d))
    return out


def test_an_engine_killed_while_it_recovers_is_restarted_and_reads_go_on(serve_repo):
    """Repro 3: kill -9 of the engine during its recovery made `fstore serve`
    exit and take gunicorn down. The supervisor now restarts it with a
    backoff, a line per restart; while it is down the workers answer reads
    (200, from the last published tables) and writes 503."""
    base, proc, log = serve_repo(DEFS)
    now = time.time()
    for i in range(40):  # a log to replay: recovery takes a moment
        post(base + "/api/v1/push", {"stream": "payments",
                                     "rows": [{"account_id": 7, "amount": 1.0, "ts": now - 100 + i}] * 50})
    first = _children(proc.pid, "engine_server")
    assert len(first) == 1
    os.kill(first[0], signal.SIGKILL)
    killed_in_recovery = 0
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and killed_in_recovery < 2:
        for pid in _children(proc.pid, "engine_server"):
            if pid not in first:
                os.kill(pid, signal.SIGKILL)  # while it recovers: it has not said ready
                first.append(pid)
                killed_in_recovery += 1
        # meanwhile: reads are served, writes are refused with a 503 that says what happened
        body = {"features": ["account_totals:n_payments"], "entities": {"account_id": [7]}}
        assert post(base + "/get-online-features", body)["results"][1]["values"] == [2000]
        try:
            post(base + "/api/v1/push", {"stream": "payments", "rows": [{"account_id": 8, "amount": 1.0,
                                                                         "ts": time.time()}]}, timeout=30)
        except urllib.error.HTTPError as e:
            assert e.code == 503 and json.loads(e.read())["title"] in ("Engine unavailable", "Outcome unknown")
        time.sleep(0.02)
    assert killed_in_recovery == 2
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # the supervisor keeps at it until an engine is ready
        log.flush()
        log.seek(0)
        text = log.read()
        if text.count("ready on") >= 2 and proc.poll() is None:
            try:
                health = json.loads(urllib.request.urlopen(base + "/health", timeout=5).read())
                if health["status"] == "ok":
                    break
            except urllib.error.HTTPError:
                pass
        time.sleep(0.2)
    assert proc.poll() is None, "fstore serve exited"
    assert re.search(r"engine restart #3", text), text
    body = {"features": ["account_totals:n_payments"], "entities": {"account_id": [7]}}
    assert post(base + "/get-online-features", body)["results"][1]["values"] == [2000]


def test_serve_says_in_one_line_what_to_fix(tmp_path):
    """Repro 7: outside a repo or before apply `fstore serve` printed a
    traceback; a taken port announced "listening" and exited 1 five seconds
    later after gunicorn's own logs."""
    empty = tmp_path / "empty"
    empty.mkdir()
    res = serve(["--repo", str(empty)])
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and "fstore init" in res.stderr
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "fstore.yaml").write_text("project: p\n")
    (repo / "defs.sql").write_text(DEFS)
    res = serve(["--repo", str(repo)])
    assert res.returncode == 1 and "Traceback" not in res.stderr and "fstore apply" in res.stderr
    from fsapp.registry.repo import Repo
    Repo(repo).apply()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        t0 = time.monotonic()
        res = serve(["--repo", str(repo), "--port", str(port)])
    assert res.returncode == 1 and time.monotonic() - t0 < 20
    assert len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert f"port {port}" in res.stderr and "in use" in res.stderr and "ready" not in res.stderr + res.stdout


def test_a_full_disk_fails_checkpoints_without_stopping_the_engine(tmp_path):
    """Repro 4: on a full disk a failed checkpoint killed the engine, which
    crash-restarted every checkpoint period while writes were acknowledged in
    between, and /ready said nothing. Now the failure is logged, counted,
    retried and reported by /ready (503 with the reason); writes go on in the
    (preallocated) WAL; once there is room the next checkpoint succeeds."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=160m", "tmpfs", str(mnt)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root): the full-disk case is covered by the unit tests")
    proc = None
    try:
        root = mnt / "repo"
        root.mkdir()
        (root / "fstore.yaml").write_text("project: full\n")
        (root / "defs.sql").write_text(DEFS)
        from fsapp.registry.repo import Repo
        Repo(root).apply()
        port = free_port()
        log = open(tmp_path / "serve.log", "w+")
        proc = subprocess.Popen([sys.executable, "-m", "fsapp.cli", "serve", "--repo", str(root), "--port", str(port),
                                 "--workers", "1", "--checkpoint-seconds", "1", "--grpc-port", str(free_port())],
                                stdout=log, stderr=subprocess.STDOUT)
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(base + "/ready", timeout=2).read()
                break
            except (urllib.error.URLError, OSError):
                assert time.monotonic() < deadline and proc.poll() is None
                time.sleep(0.2)

        def push(n):
            return post(base + "/api/v1/push", {"stream": "payments",
                                                "rows": [{"account_id": 1, "amount": 1.0, "ts": time.time()}] * n})

        push(10)
        filler = mnt / "filler"
        with open(filler, "wb") as f:  # fill the disk to the last page
            try:
                while True:
                    f.write(b"\0" * (1 << 20))
                    f.flush()
            except OSError:
                pass
        for _ in range(20):  # acknowledged while checkpoints fail (the WAL segment is preallocated)
            assert push(5)["accepted"] == 5
        deadline = time.monotonic() + 20
        while True:
            try:
                urllib.request.urlopen(base + "/ready", timeout=5)
            except urllib.error.HTTPError as e:
                desc = json.loads(e.read())["description"]
                assert e.code == 503 and "checkpoint failed" in desc and "free disk space" in desc
                break
            assert time.monotonic() < deadline, "/ready never reported the failed checkpoint"
            time.sleep(0.3)
        filler.unlink()
        deadline = time.monotonic() + 20
        while True:  # the next checkpoint succeeds: ready again
            try:
                urllib.request.urlopen(base + "/ready", timeout=5).read()
                break
            except urllib.error.HTTPError:
                assert time.monotonic() < deadline
                time.sleep(0.3)
        log.seek(0)
        text = log.read()
        assert "checkpoint failed" in text and "restart #" not in text, text[-2000:]
        body = {"features": ["account_totals:n_payments"], "entities": {"account_id": [1]}}
        assert post(base + "/get-online-features", body)["results"][1]["values"] == [110]
        metrics = urllib.request.urlopen(base + "/metrics", timeout=5).read().decode()
        assert re.search(r"fstore_checkpoint_failures_total\S* [1-9]", metrics), metrics[-800:]
    finally:
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)
        if proc is not None:
            log.close()
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_gunicorn_level_errors_are_json_too(serve_repo):
    """Repro 7: a bad Content-Length, an over-long request line (414) and
    other errors gunicorn answers itself came back as its HTML page."""
    base, proc, log = serve_repo(DEFS)
    host, port = base.split("//")[1].split(":")

    def raw(request: bytes) -> tuple[int, str, dict]:
        with socket.create_connection((host, int(port)), timeout=10) as s:
            s.sendall(request)
            data = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        status = int(head.split(b" ")[1])
        ctype = next(line.split(b":", 1)[1].strip().decode() for line in head.split(b"\r\n")
                     if line.lower().startswith(b"content-type:"))
        return status, ctype, json.loads(body)

    status, ctype, doc = raw(b"GET /health?x=" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status == 414 and ctype == "application/json" and "JSON body" in doc["description"]
    status, ctype, doc = raw(b"POST /api/v1/push HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n")
    assert status == 400 and ctype == "application/json" and set(doc) == {"title", "description"}
    status, ctype, doc = raw(b"GET /health HTTP/1.1\r\nHost: x\r\n" + b"X-Big: " + b"b" * 9000 + b"\r\n\r\n")
    assert status in (400, 431) and ctype == "application/json"


def test_a_damaged_data_directory_stops_serve_with_what_to_do(serve_repo, tmp_path):
    """Repro 5 against real `fstore serve`: with the log after the checkpoint
    deleted, the engine refuses to start naming the files and the fix, and
    the supervisor stops in a line instead of restarting it forever."""
    base, proc, log = serve_repo(DEFS)
    post(base + "/api/v1/push", {"stream": "payments", "rows": [{"account_id": 1, "amount": 1.0,
                                                                 "ts": time.time()}]})
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 0
    root = tmp_path / "repo"
    for seg in (root / "data" / "engine" / "wal").glob("*.wal"):
        seg.unlink()
    t0 = time.monotonic()
    res = serve(["--repo", str(root), "--port", str(free_port())])
    assert res.returncode == 1 and time.monotonic() - t0 < 60
    assert "holds no segment" in res.stderr and "move" in res.stderr and "aside" in res.stderr
    assert res.stderr.strip().splitlines()[-1].startswith("fstore serve: the engine refuses to start")
    assert "Traceback" not in res.stderr


def test_a_served_table_nearly_full_grows_ahead_of_the_push_that_would_fill_it(serve_repo):
    """Issue 15: the push that found a table full grew it and waited for the
    whole copy (0.45 s at 1M rows). `fstore serve`'s engine grows a table
    with less than a tenth of its rows free in a thread of its own, the copy
    without the engine lock (Engine.grow_tables); /metrics shows it, and
    every key reads its value across the growth."""
    base, proc, log = serve_repo(DEFS)

    def metric(name):
        text = urllib.request.urlopen(base + "/metrics", timeout=5).read().decode()
        m = re.search(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.M)
        return None if m is None else float(m.group(1))

    def push(accounts):
        return post(base + "/api/v1/push", {"stream": "payments", "rows": [
            {"account_id": a, "amount": 1.0, "ts": time.time()} for a in accounts]})

    push([0])
    cap = int(metric("fstore_online_capacity_rows"))
    first = int(cap * 0.95)
    assert push(range(1, first))["accepted"] == first - 1  # less than a tenth free
    deadline = time.monotonic() + 20
    while metric("fstore_online_tables_grown_ahead_total") != 1:
        assert time.monotonic() < deadline, "the nearly full table was not grown ahead"
        time.sleep(0.1)
    grown = int(metric("fstore_online_capacity_rows"))
    assert grown > cap
    assert push(range(first, grown - 1))["accepted"] == grown - 1 - first
    body = {"features": ["account_totals:n_payments"], "entities": {"account_id": list(range(grown - 1))}}
    assert post(base + "/get-online-features", body)["results"][1]["values"] == [1] * (grown - 1)
