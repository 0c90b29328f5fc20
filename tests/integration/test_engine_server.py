"""The engine process and its socket protocol: a worker-side client pushes,
a worker-side reader sees the rows in shared memory, errors come back typed,
and a killed engine restarts with every acknowledged push."""
import os
import signal
import subprocess
import sys
import time

import pytest

from fsapp.engine.errors import BatchError, UnknownStreamError
from fsapp.registry.repo import Repo
from fsapp.registry.scaffold import init_repo
from fsapp.serve.engine_server import CheckpointSchedule, _compact
from fsapp.serve.protocol import EngineClient, EngineUnavailable
from fsapp.serve.reader import OnlineReader
from fsapp.serve.supervisor import _wait_for_engine, socket_path_for


@pytest.fixture
def repo(tmp_path):
    init_repo(tmp_path / "repo")
    r = Repo(tmp_path / "repo")
    r.apply()
    return r


def start_engine(repo, *args):
    sock = socket_path_for(repo)
    proc = subprocess.Popen([sys.executable, "-m", "fsapp.serve.engine_server", "--repo", str(repo.root),
                             "--socket", sock, "--fsync", "always", *args])
    _wait_for_engine(sock, proc, 60)
    return proc, sock


def row(user, ts, amount=10.0):
    return {"user_id": user, "merchant_id": "m1", "amount": amount, "currency": "EUR", "country": "DE",
            "is_online": True, "ts": ts}


def test_push_through_the_socket_is_read_from_shared_memory(repo):
    proc, sock = start_engine(repo)
    try:
        client = EngineClient(sock)
        t = time.time_ns() // 1000
        res, _ = client.call("push", stream="transactions", rows=[row(1, t - 3_600_000_000), row(1, t - 60_000_000)])
        assert res["accepted"] == 2 and res["lsn"] >= 1
        reader = OnlineReader(str(repo.data_dir / "engine"), str(repo.registry_path))
        out = reader.get_online_features(["user_txn:last_5_amounts"], entities={"user_id": [1, 2]},
                                         now=time.time_ns() // 1000)
        assert out["results"][1]["statuses"] == ["PRESENT", "NOT_FOUND"]
        assert out["results"][1]["values"][0][:2] == [10.0, 10.0]
        with pytest.raises(UnknownStreamError):
            client.call("push", stream="nope", rows=[{"a": 1}])
        with pytest.raises(BatchError, match="timestamp"):
            client.call("push", stream="transactions", rows=[{"user_id": 1}])
        reader.close()
    finally:
        client.close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    assert not os.path.exists(sock)


def test_killed_engine_restarts_with_every_acknowledged_push(repo):
    proc, sock = start_engine(repo)
    client = EngineClient(sock)  # closed in the finally below
    t = time.time_ns() // 1000
    acked = 0
    for i in range(30):
        client.call("push", stream="transactions", rows=[row(7, t - 1_000_000 * (30 - i), amount=1.0)])
        acked += 1
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    with pytest.raises(EngineUnavailable):
        client.call("ping")
    proc, sock = start_engine(repo)
    try:
        out, _ = client.call("online", features=["user_txn:last_5_amounts"], entities={"user_id": [7]})
        assert out["results"][1]["values"][0] == [1.0] * 5
        stats, _ = client.call("stats")
        assert stats["applied_lsn"] == acked
    finally:
        client.close()
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)


def test_the_engine_checkpoints_early_once_a_restart_would_replay_more_than_its_budget(repo):
    """A period of an hour, a replay budget of 50 ms: pushes make the engine
    checkpoint long before the period (a restart replays little)."""
    proc, sock = start_engine(repo, "--checkpoint-seconds", "3600", "--checkpoint-replay-seconds", "0.05")
    client = EngineClient(sock)
    try:
        t = time.time_ns() // 1000
        deadline = time.monotonic() + 30
        i = 0
        while True:
            client.call("push", stream="transactions", rows=[row(i % 50, t - 1_000_000 * i) for _ in range(20)])
            i += 1
            stats, _ = client.call("stats")
            if stats["checkpoint_lsn"] > 0:
                break
            assert time.monotonic() < deadline, f"no checkpoint after {i} pushes: {stats['replay_backlog_s']} s"
        # reset by it: a restart replays only what came after it (a few pushes; their work
        # under a loaded machine can pass the budget again, so the bound on seconds is loose)
        assert stats["applied_lsn"] - stats["checkpoint_lsn"] < i
        assert stats["replay_backlog_s"] < 0.05 + 0.25
    finally:
        client.close()
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)


def test_checkpoint_schedule_is_periodic_early_on_a_backlog_and_spaced_by_its_own_cost():
    s = CheckpointSchedule(period_s=60, replay_s=2, now=100)
    assert not s.due(101, backlog_s=1.9)
    assert s.due(101, backlog_s=2.0)  # the backlog, long before the period
    s.done(started=101, ended=104, ok=True)  # it took 3 s
    assert not s.due(106, backlog_s=5)  # not again within its own duration
    assert s.due(107, backlog_s=5)
    assert not s.due(163, backlog_s=0) and s.due(164, backlog_s=0)  # the period, from its end
    s.done(started=164, ended=165, ok=False)  # failed: retried within 10 s, backlog or not
    assert not s.due(174, backlog_s=9) and s.due(175, backlog_s=0)


def test_the_server_loops_compaction_says_what_it_gave_back_and_survives_a_failure(capsys):
    """After each checkpoint the engine server compacts window state
    (Engine.compact): what it gave back is logged; a failure (no memory for
    a new pool) is logged and the engine goes on serving."""
    class Engine:
        def __init__(self, result):
            self.result = result

        def compact(self):
            if isinstance(self.result, Exception):
                raise self.result
            return self.result
    _compact(Engine(5_000_000))
    _compact(Engine(0))
    _compact(Engine(MemoryError("no room for a new pool")))
    out, err = capsys.readouterr()
    assert out == "engine: window state compacted, 5.0 MB given back\n"
    assert "compacting window state failed (MemoryError: no room for a new pool)" in err


def test_worker_backend_reads_json_from_memory_and_as_of_from_the_engine(repo):
    """A gunicorn worker's backend answers online reads with the API's JSON
    bytes: from shared memory for now, forwarded to the engine (which
    recomputes from window state) for `as_of`; both parse to what the
    engine's own dict answer says."""
    import json

    from fsapp.serve.worker import WorkerBackend

    proc, sock = start_engine(repo)
    backend = None
    try:
        t = time.time_ns() // 1000
        client = EngineClient(sock)
        client.call("push", stream="transactions", rows=[row(3, t - 120_000_000, 4.0), row(3, t - 60_000_000, 6.0)])
        client.close()
        backend = WorkerBackend(str(repo.data_dir / "engine"), str(repo.registry_path), sock)
        feats = ["user_txn:last_5_amounts", "user_txn:amount_24h"]
        now_text = backend.online(feats, None, {"user_id": [3, 4]}, None, False)
        assert isinstance(now_text, bytes)
        now = json.loads(now_text)
        assert now["results"][1]["values"] == [[6.0, 4.0], None]  # newest first, only the values there are
        assert now["results"][1]["statuses"] == ["PRESENT", "NOT_FOUND"]
        # as of a time after the last event (older times may be past the retained window state)
        past_text = backend.online(feats, None, {"user_id": [3]}, t - 30_000_000, True)
        assert isinstance(past_text, bytes)
        past = json.loads(past_text)
        assert past["metadata"]["feature_names"] == ["user_id", "user_txn__last_5_amounts", "user_txn__amount_24h"]
        assert past["results"][1]["values"] == [[6.0, 4.0]]
        assert past["results"][2]["values"] == [10.0]
    finally:
        if backend is not None:
            backend.reader.close()
            backend.client.close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
