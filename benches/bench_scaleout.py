"""Scale-out on Kafka: 3 `fstore serve` nodes in one consumer group against 1
node, same topic, same machine, same run (tansu broker; issue 16).

- Ingest: a group formed and live on an empty 6-partition topic; N keyed
  events (Kafka's partitioner) produced as fast as one producer can; events/s
  from the first produce to every node's offsets summing to N.
- Reads: single-key online reads from client processes for a few seconds,
  reads/s. Through any node (3 nodes: keys of the other owners forwarded to
  them) and routed to the owner by the client (`X-Fstore-Local`, what
  `fsapp.sdk.routing.Router` does), against the same reads of one node.
- A node killed (kill -9) while events arrive: seconds until the other two own
  its partitions and have replayed them (`session.timeout.ms` 6000 is the
  floor), then a full recount: every key's lifetime count, read through a
  surviving node, against what was produced.

This 2-core machine runs all the nodes (each a supervisor, an engine and a
gunicorn worker), the broker and the clients: three nodes share the cores one
node has, so the ratios say what the group costs here, not what three
machines would give.
"""
from __future__ import annotations

import json
import multiprocessing
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

from benches._common import Row
from benches.bench_kafka import _broker

DEFS = """
CREATE ENTITY account (account_id BIGINT);
CREATE STREAM payments (account_id BIGINT, amount DOUBLE, ts TIMESTAMP)
    WITH (topic = '{topic}', timestamp = 'ts', allowed_lateness = '1d');
CREATE FEATURE VIEW account_totals AS
SELECT account_id, count(*) OVER lifetime() AS n, sum(amount) OVER lifetime() AS total FROM payments;
"""
PARTS = 6
FEATURE = "account_totals:n"


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Node:
    def __init__(self, tmp: str, name: str, bootstrap: str, topic: str, group: str):
        from fsapp.registry.repo import Repo

        self.root = os.path.join(tmp, name)
        os.makedirs(self.root)
        with open(os.path.join(self.root, "fstore.yaml"), "w") as f:
            f.write(f"project: scale\nkafka:\n  bootstrap_servers: {bootstrap}\n  assign: group\n"
                    f"  group_id: {group}\n  batch_size: 5000\n  poll_timeout_ms: 20\n"
                    "  session.timeout.ms: 6000\n  heartbeat.interval.ms: 500\n  fetch.wait.max.ms: 10\n"
                    "  dead_letter_file: data/dead.jsonl\n")
        with open(os.path.join(self.root, "defs.sql"), "w") as f:
            f.write(DEFS.format(topic=topic))
        Repo(self.root).apply()
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(os.path.join(tmp, f"{name}.log"), "a+")
        self.proc = subprocess.Popen([sys.executable, "-m", "fsapp.cli", "serve", "--repo", self.root,
                                      "--port", str(self.port), "--workers", "1", "--fsync", "never",
                                      "--grpc-port", "0"],
                                     stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)

    def cluster(self) -> dict | None:
        try:
            with urllib.request.urlopen(self.url + "/api/v1/cluster", timeout=5) as r:
                return json.loads(r.read())
        except OSError:
            return None

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill9(self) -> None:
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.alive():
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.log.close()


def _live(nodes: list[_Node]) -> tuple[bool, int]:
    """(every partition owned by exactly one live node and caught up, offsets' sum)."""
    docs = [n.cluster() for n in nodes if n.alive()]
    if any(d is None for d in docs):
        return False, 0
    parts = [p for d in docs for p in d["partitions"]]
    ok = sorted(p["partition"] for p in parts) == list(range(PARTS)) and all(p["state"] == "live" for p in parts)
    return ok, sum(p["offset"] or 0 for p in parts)


def _wait(cond, timeout_s: float, what: str) -> float:
    start = time.monotonic()
    while not cond():
        if time.monotonic() - start > timeout_s:
            raise RuntimeError(f"scale-out bench: {what} within {timeout_s} s")
        time.sleep(0.05)
    return time.monotonic() - start


def _produce(bootstrap: str, topic: str, start: int, n: int, keys: int, rate: float | None = None) -> None:
    """n events keyed by the account's text (Kafka's partitioner): account i % keys."""
    from confluent_kafka import Producer

    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "partitioner": "murmur2_random",
                  "queue.buffering.max.messages": 2_000_000})
    t0 = time.time_ns() // 1000 - 3_600_000_000
    began = time.perf_counter()
    for i in range(start, start + n):
        a = i % keys
        p.produce(topic, b'{"account_id":%d,"amount":1.0,"ts":%d}' % (a, t0 + i), key=b"%d" % a)
        if i % 5000 == 0:
            p.poll(0)
            if rate is not None:
                ahead = (i - start) / rate - (time.perf_counter() - began)
                if ahead > 0:
                    time.sleep(ahead)
    p.flush(120)


def _reader(urls: list[str], keys: int, seconds: float, routed_parts: int, out) -> None:
    """Single-key reads for `seconds`: to a random node (forwarded when not
    the owner), or (routed_parts > 0) to the key's owner, asked for its own state."""
    import http.client

    from fsapp.engine.cluster import partition_for

    owners = {}
    if routed_parts:
        for url in urls:
            with urllib.request.urlopen(url + "/api/v1/cluster", timeout=5) as r:
                for p in json.loads(r.read())["partitions"]:
                    owners[p["partition"]] = url
    rng = random.Random(os.getpid())
    ok = errors = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        k = rng.randrange(keys)
        url = owners[partition_for(k, routed_parts)] if routed_parts else rng.choice(urls)
        host, port = url.rsplit("/", 1)[1].split(":")
        body = json.dumps({"features": [FEATURE], "entities": {"account_id": [k]}})
        headers = {"Content-Type": "application/json", **({"X-Fstore-Local": "1"} if routed_parts else {})}
        c = http.client.HTTPConnection(host, int(port), timeout=5)
        try:
            c.request("POST", "/api/v1/features/online", body, headers)
            r = c.getresponse()
            doc = json.loads(r.read())
            ok += r.status == 200 and doc["results"][1]["statuses"][0] == "PRESENT"
            errors += r.status != 200
        except OSError:
            errors += 1
        finally:
            c.close()
    out.put((ok, errors))


def _reads_per_s(urls: list[str], keys: int, seconds: float, routed: bool, clients: int = 4) -> float:
    ctx = multiprocessing.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=_reader, args=(urls, keys, seconds, PARTS if routed else 0, q)) for _ in range(clients)]
    for p in procs:
        p.start()
    got = [q.get(timeout=seconds + 60) for _ in procs]
    for p in procs:
        p.join(30)
    ok = sum(g[0] for g in got)
    return ok / seconds


def _recount(node: _Node, expected: dict) -> int:
    """Keys whose lifetime count, read through `node`, equals what was produced."""
    keys = sorted(expected)
    good = 0
    for i in range(0, len(keys), 500):
        part = keys[i:i + 500]
        req = urllib.request.Request(node.url + "/api/v1/features/online",
                                     data=json.dumps({"features": [FEATURE], "entities": {"account_id": part}}).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as r:
            vals = json.loads(r.read())["results"][1]["values"]
        good += sum(v == expected[k] for k, v in zip(part, vals))
    return good


def _scenario(tmp: str, bootstrap: str, n_nodes: int, n_events: int, keys: int, read_s: float,
              kill: bool) -> dict:
    from confluent_kafka.admin import AdminClient, NewTopic

    tag = f"{n_nodes}n-{time.monotonic_ns()}"
    topic = f"scale-{tag}"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(topic, num_partitions=PARTS, replication_factor=1)])[topic].result(30)
    nodes = [_Node(tmp, f"{tag}-{i}", bootstrap, topic, f"g-{tag}") for i in range(n_nodes)]
    out: dict = {}
    try:
        _wait(lambda: _live(nodes)[0] and all(len(n.cluster()["partitions"]) > 0 for n in nodes), 120,
              f"{n_nodes} node(s) forming a group")
        started = time.monotonic()
        producer = multiprocessing.get_context("spawn").Process(target=_produce,
                                                                args=(bootstrap, topic, 0, n_events, keys))
        producer.start()
        _wait(lambda: _live(nodes)[1] >= n_events, 300, f"{n_events} events ingested by {n_nodes} node(s)")
        out["ingest"] = n_events / (time.monotonic() - started)
        producer.join(60)
        urls = [n.url for n in nodes]
        out["reads_any"] = _reads_per_s(urls, keys, read_s, routed=False)
        out["reads_routed"] = _reads_per_s(urls, keys, read_s, routed=True)
        if kill:
            expected = {k: n_events // keys + (k < n_events % keys) for k in range(keys)}
            more = n_events // 2
            producer = multiprocessing.get_context("spawn").Process(
                target=_produce, args=(bootstrap, topic, n_events, more, keys, more / 8.0))  # over ~8 s
            producer.start()
            time.sleep(2.0)
            killed = time.monotonic()
            nodes[0].kill9()
            _wait(lambda: _live(nodes[1:])[0], 120, "the survivors owning every partition")
            out["takeover_s"] = time.monotonic() - killed
            producer.join(60)
            for i in range(n_events, n_events + more):
                expected[i % keys] += 1
            _wait(lambda: _live(nodes[1:])[1] >= n_events + more, 120, "the survivors catching up")
            out["recount"] = (_recount(nodes[1], expected), keys)
    finally:
        for n in nodes:
            n.stop()
    return out


def run(quick: bool) -> list[Row]:
    n_events, keys, read_s = (60_000, 6_000, 3.0) if quick else (300_000, 30_000, 6.0)
    broker, bootstrap = _broker()
    tmp = tempfile.mkdtemp(prefix="fstore-bench-scaleout-")
    try:
        one = _scenario(tmp, bootstrap, 1, n_events, keys, read_s, kill=False)
        three = _scenario(tmp, bootstrap, 3, n_events, keys, read_s, kill=True)
    finally:
        broker.kill()
        broker.wait()
        shutil.rmtree(tmp, ignore_errors=True)
    good, total = three["recount"]
    return [
        Row("scaleout", f"ingest events/s, 3 nodes ({PARTS} partitions, {n_events:,} events)", three["ingest"],
            "1 node", one["ingest"], "events/s", "higher", "3 machines: ~3x"),
        Row("scaleout", "single-key reads/s through any node (3 nodes, 2/3 forwarded)", three["reads_any"],
            "1 node", one["reads_any"], "reads/s", "higher"),
        Row("scaleout", "single-key reads/s routed to the owner (3 nodes, Router)", three["reads_routed"],
            "1 node", one["reads_routed"], "reads/s", "higher"),
        Row("scaleout", "kill -9 of 1 of 3 under load → the others own and replayed every partition",
            three["takeover_s"], "session.timeout.ms", 6.0, "s", "lower", "~session timeout"),
        Row("scaleout", "keys exact after the kill (recount through a survivor)", good, "keys", total, "keys",
            "higher", "all"),
    ]
