"""`fstore serve` for real: the engine process + gunicorn with 2 workers on a
free loopback port. A value pushed through one worker is read back from every
worker; kill -9 of the engine during pushes at fsync=always loses no
acknowledged event and counts none twice; SIGTERM stops everything."""
import json
import os
import re
import signal
import threading
import time
import urllib.error
import urllib.request

import pytest


DEFS = """
CREATE ENTITY account (account_id BIGINT);
CREATE STREAM payments (account_id BIGINT, amount DOUBLE, ts TIMESTAMP)
    WITH (timestamp = 'ts', allowed_lateness = '1h');
CREATE FEATURE VIEW account_totals AS
SELECT account_id,
       count(*) OVER lifetime() AS n_payments,
       sum(amount) OVER lifetime() AS total
FROM payments;
"""


@pytest.fixture
def served(serve_repo):
    return serve_repo(DEFS)


def post(url, body, timeout=30):
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read()), r.headers.get("X-Fstore-Worker")


def read_totals(base, accounts):
    body = {"features": ["account_totals:n_payments", "account_totals:total"], "entities": {"account_id": accounts}}
    return post(base + "/get-online-features", body)


def test_push_through_one_worker_is_read_from_every_worker(served):
    base, proc, _ = served
    now = time.time()
    res, _ = post(base + "/api/v1/push", {"stream": "payments",
                                          "rows": [{"account_id": 1, "amount": 2.5, "ts": now - 10},
                                                   {"account_id": 1, "amount": 4.0, "ts": now - 5}]})
    assert res["accepted"] == 2
    seen = {}
    for _ in range(60):
        # two reads at once: a sync worker busy with one leaves the other to
        # the second worker (one at a time, one worker may win every accept)
        pair = []
        both = [threading.Thread(target=lambda: pair.append(read_totals(base, [1, 2]))) for _ in range(2)]
        for t in both:
            t.start()
        for t in both:
            t.join(30)
        for out, worker in pair:
            seen[worker] = out
        if len(seen) == 2:
            break
    assert len(seen) == 2, "the reads never reached the second worker"
    for out in seen.values():
        assert out["metadata"]["feature_names"] == ["account_id", "n_payments", "total"]
        assert out["results"][1]["values"] == [2, 0] and out["results"][2]["values"][0] == 6.5
        assert out["results"][1]["statuses"] == ["PRESENT", "NOT_FOUND"]
    # an output name given twice is refused by the workers' reader as by the
    # engine (422), never answered with the column listed twice
    twice = {"features": ["account_totals:total", "account_totals:total"], "entities": {"account_id": [1]}}
    for path in ("/get-online-features", "/api/v1/features/online"):
        with pytest.raises(urllib.error.HTTPError) as e:
            post(base + path, twice)
        assert e.value.code == 422 and "requested twice" in json.loads(e.value.read())["description"]
    from fsapp import Client
    from fsapp.errors import FeatureNameCollision
    client = Client(base)
    with pytest.raises(FeatureNameCollision, match="requested twice"):
        client.get_online_features(twice["features"], entity_rows=twice["entities"])
    client.close()
    # bad input is a 4xx with a JSON message, never a 500
    for body, status in (({"stream": "nope", "rows": [{"a": 1}]}, 404),
                         ({"stream": "payments", "rows": [{"account_id": "x", "ts": now}]}, 422)):
        with pytest.raises(urllib.error.HTTPError) as e:
            post(base + "/api/v1/push", body)
        assert e.value.code == status and "description" in json.loads(e.value.read())


def test_engine_killed_during_pushes_loses_no_acknowledged_event(served):
    base, proc, log = served
    sent = acked = 0
    stop = threading.Event()
    lock = threading.Lock()

    def pusher():
        nonlocal sent, acked
        while not stop.is_set():
            with lock:
                sent += 1
            try:
                post(base + "/api/v1/push", {"stream": "payments",
                                             "rows": [{"account_id": 9, "amount": 1.0, "ts": time.time()}]}, timeout=10)
                with lock:
                    acked += 1
            except (urllib.error.HTTPError, urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.05)  # 503 while the engine restarts: not acknowledged

    threads = [threading.Thread(target=pusher) for _ in range(2)]
    for t in threads:
        t.start()
    time.sleep(1.5)
    log.flush()
    log.seek(0)
    pid = int(re.findall(r"engine pid (\d+) ready", log.read())[-1])
    os.kill(pid, signal.SIGKILL)
    time.sleep(3.0)  # the supervisor restarts the engine; pushes resume
    stop.set()
    for t in threads:
        t.join(30)
    log.seek(0)
    assert "restart #1" in log.read()
    deadline = time.monotonic() + 10
    while True:
        out, _ = read_totals(base, [9])
        n = out["results"][1]["values"][0] or 0
        if n >= acked or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert acked > 0
    assert acked <= n <= sent, f"acknowledged {acked}, counted {n}, sent {sent}"
    assert out["results"][2]["values"][0] == n  # each event counted once (amount 1.0 each)


def _health_count(base):
    text = urllib.request.urlopen(base + "/metrics", timeout=10).read().decode()
    return text, sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                     if line.startswith("fstore_http_requests_total{") and 'route="/health"' in line)


def test_metrics_sum_every_worker(served):
    """Every worker's counts are in every scrape (prometheus_client's
    multiprocess mode), and a worker that dies does not take its counts
    with it: counters never go back."""
    base, proc, _ = served
    workers, sent, deadline = set(), 0, time.monotonic() + 30
    # the kernel hands connections to whichever worker accepts first (one may still be starting)
    while len(workers) < 2 and time.monotonic() < deadline:
        with urllib.request.urlopen(base + "/health", timeout=10) as r:
            workers.add(r.headers.get("X-Fstore-Worker"))
        sent += 1
    assert len(workers) == 2 and sent >= 1
    # a request is counted just after its response is sent: allow that moment
    text, total, deadline = "", 0.0, time.monotonic() + 10
    while time.monotonic() < deadline:
        text, total = _health_count(base)
        if total >= sent:
            break
        time.sleep(0.1)
    assert total >= sent, text
    assert "fstore_wal_applied_lsn" in text  # engine-side metrics come along

    os.kill(int(next(iter(workers))), signal.SIGKILL)  # gunicorn starts another in its place
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            text, after = _health_count(base)
            break
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.1)
    assert after >= total, text


def test_kill_9_during_concurrent_pushes_with_retries_counts_every_event_exactly_once(served):
    """Issue 13, repro 8: a push answered 503 was sometimes applied, so
    retrying as told duplicated events. Pushes now carry an idempotency key
    (Client makes one per push and retries unknown outcomes with it): four
    clients push while the engine is killed three times; every push ends up
    acknowledged, and each account counts each of its events exactly once."""
    from fsapp import Client

    base, proc, log = served
    pushed, errors = {}, []
    kills_done = threading.Event()

    def pusher(account):
        client = Client(base, timeout=30)
        n = 0
        try:
            while not kills_done.is_set() or n < 20:
                client.push("payments", [{"account_id": account, "amount": 1.0, "ts": time.time() - 1}], retries=12)
                n += 1
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append((account, e))
        pushed[account] = n

    def engine_pid():
        log.flush()
        log.seek(0)
        return int(re.findall(r"engine pid (\d+) ready", log.read())[-1])

    threads = [threading.Thread(target=pusher, args=(100 + k,)) for k in range(4)]
    for t in threads:
        t.start()
    try:
        for _ in range(3):
            time.sleep(0.8)  # pushes in flight
            pid = engine_pid()
            os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 60  # the supervisor restarts it; then the next kill
            while engine_pid() == pid and time.monotonic() < deadline:
                time.sleep(0.1)
    finally:
        kills_done.set()
        for t in threads:
            t.join(300)
    assert not errors, errors[:3]
    log.seek(0)
    assert "restart #3" in log.read()
    accounts = sorted(pushed)
    out, _ = read_totals(base, accounts)
    assert out["results"][1]["values"] == [pushed[a] for a in accounts], (out["results"][1], pushed)
    assert out["results"][2]["values"] == [float(pushed[a]) for a in accounts]
