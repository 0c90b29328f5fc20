"""Exactly-once effect: the engine process (`python -m fsapp.serve.engine_server`)
consumes a topic and is killed with SIGKILL at random points, a few times,
while events keep arriving; after the last restart has caught up, every
key's lifetime count equals a recount of the topic — nothing missing,
nothing counted twice — and malformed messages were skipped, not counted."""
import collections
import json
import signal
import subprocess
import sys
import time

from fsapp.registry.repo import Repo
from fsapp.serve.protocol import EngineClient
from fsapp.serve.supervisor import _wait_for_engine, socket_path_for

DEFS = """
CREATE ENTITY account (account_id BIGINT);
CREATE STREAM payments (account_id BIGINT, amount DOUBLE, ts TIMESTAMP)
    WITH (topic = '{topic}', timestamp = 'ts', allowed_lateness = '1d');
CREATE FEATURE VIEW account_totals AS
SELECT account_id, count(*) OVER lifetime() AS n_payments FROM payments;
"""
KEYS = 7


def produce(broker, topic, start, n, rng, sizes):
    p = broker.producer()
    t0 = time.time_ns() // 1000 - 3_600_000_000

    def delivered(err, msg):
        assert err is None, err
        sizes[msg.partition()] += 1

    for i in range(start, start + n):
        if rng.random() < 0.02:
            value = b"{broken" if rng.random() < 0.5 else json.dumps({"amount": 1.0}).encode()  # no key
        else:
            value = json.dumps({"account_id": int(rng.integers(KEYS)), "amount": 1.0, "ts": t0 + i}).encode()
        p.produce(topic, value, partition=int(rng.integers(3)), on_delivery=delivered)
        if i % 500 == 0:
            p.poll(0)
    p.flush(30)


def test_kill9_at_random_points_neither_loses_nor_double_counts(kafka_broker, tmp_path, rng):
    topic = "payments-eos"
    kafka_broker.create_topic(topic, partitions=3)
    root = tmp_path / "repo"
    root.mkdir()
    (root / "fstore.yaml").write_text(f"project: eos\nkafka:\n  bootstrap_servers: {kafka_broker.bootstrap}\n"
                                      "  batch_size: 50\n  poll_timeout_ms: 20\n")
    (root / "defs.sql").write_text(DEFS.format(topic=topic))
    repo = Repo(root)
    repo.apply()
    sock = socket_path_for(repo)
    log = open(tmp_path / "engine.log", "w+")

    def start():
        proc = subprocess.Popen([sys.executable, "-m", "fsapp.serve.engine_server", "--repo", str(root),
                                 "--socket", sock, "--fsync", "always", "--checkpoint-seconds", "0.5"],
                                stdout=log, stderr=subprocess.STDOUT)
        _wait_for_engine(sock, proc, 60)
        return proc

    sizes = collections.Counter()
    produce(kafka_broker, topic, 0, 3000, rng, sizes)
    proc = start()
    kills, progress = 0, []
    try:
        for cycle in range(4):
            # kill mid-stream: once the engine has consumed a random share of
            # what is there, a random moment later (inside a batch, a WAL
            # append, a checkpoint...)
            total = sum(sizes.values())
            target = int(rng.integers(total // 8, total - total // 8)) if cycle % 2 == 0 else 0
            client = EngineClient(sock)
            deadline = time.monotonic() + 30
            while (done := sum(client.call("stats")[0]["offsets"].values())) < target:
                assert time.monotonic() < deadline, "the engine does not consume"
                time.sleep(0.01)
            client.close()
            progress.append(done)
            time.sleep(float(rng.uniform(0, 0.2)))
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            kills += 1
            if cycle == 1:
                produce(kafka_broker, topic, 3000, 2000, rng, sizes)
            proc = start()
        client = EngineClient(sock)
        deadline = time.monotonic() + 40
        while True:
            stats, _ = client.call("stats")
            done = {f"{topic}/{p}": n for p, n in sizes.items()}
            if stats["offsets"] == done:
                break
            assert time.monotonic() < deadline, f"not caught up: {stats['offsets']} vs {done}; {stats.get('kafka')}"
            time.sleep(0.1)
        out, _ = client.call("online", features=["account_totals:n_payments"],
                             entities={"account_id": list(range(KEYS))})
        client.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
        log.close()
    recount = collections.Counter()
    for m in kafka_broker.read_all(topic):
        try:
            ev = json.loads(m.value())
        except ValueError:
            continue
        if "account_id" in ev:
            recount[ev["account_id"]] += 1
    assert sum(recount.values()) > 4500 and kills == 4, progress
    assert out["results"][1]["values"] == [recount[k] for k in range(KEYS)]
