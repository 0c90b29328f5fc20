"""Scale-out on Kafka for real: three `fstore serve` nodes in one consumer
group on a 6-partition topic (tansu). Each serves the keys of its
partitions; kill -9 of one node (its whole process group, as a machine
crash) → the others take its partitions over, replay them and serve exact
lifetime counts for every key; the killed node comes back → after the
rebalance each key is held by its owner only, exactly, and no node served
a key of a partition it did not own as PRESENT at any moment in between.
The `Router` finds each key's owner through GET /api/v1/cluster, and any
node answers for every key by asking the owners (the members topic)."""
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

from fsapp.engine.cluster import partition_for
from fsapp.registry.repo import Repo
from fsapp.sdk.routing import NoOwner, Router

DEFS = """
CREATE ENTITY account (account_id BIGINT);
CREATE STREAM payments (account_id BIGINT, amount DOUBLE, ts TIMESTAMP)
    WITH (topic = '{topic}', timestamp = 'ts', allowed_lateness = '1d');
CREATE FEATURE VIEW account_totals AS
SELECT account_id, count(*) OVER lifetime() AS n_payments FROM payments;
"""
TOPIC, PARTS, KEYS = "payments-scaleout", 6, 36


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Node:
    """One `fstore serve` (supervisor, engine, one gunicorn worker) in its own
    process group, so that kill -9 takes the whole node down at once."""

    def __init__(self, tmp_path, name, bootstrap, grpc_port=0):
        self.root = tmp_path / name
        self.root.mkdir()
        (self.root / "fstore.yaml").write_text(
            f"project: scaleout\nregistry: data/registry.db\ndata_dir: data\nkafka:\n  bootstrap_servers: "
            f"{bootstrap}\n  assign: group\n  group_id: g-scaleout\n  batch_size: 500\n  poll_timeout_ms: 50\n"
            "  session.timeout.ms: 6000\n  heartbeat.interval.ms: 500\n  fetch.wait.max.ms: 10\n"
            "  dead_letter_file: data/dead.jsonl\n")
        (self.root / "defs.sql").write_text(DEFS.format(topic=TOPIC))
        Repo(self.root).apply()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.grpc_port = grpc_port
        self.log = open(tmp_path / f"{name}.log", "a+")
        self.proc = None

    def start(self):
        self.proc = subprocess.Popen([sys.executable, "-m", "fsapp.cli", "serve", "--repo", str(self.root),
                                      "--port", str(self.port), "--workers", "1", "--fsync", "never",
                                      "--grpc-port", str(self.grpc_port), "--grpc-workers", "1"],
                                     stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        return self

    def wait_up(self):
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(self.url + "/health", timeout=2).read()
                return
            except (urllib.error.URLError, ConnectionError, OSError):
                assert self.proc.poll() is None, self.text()
                time.sleep(0.1)
        raise AssertionError(f"{self.url} did not answer /health: {self.text()}")

    def kill9(self):
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.log.close()

    def text(self):
        self.log.seek(0)
        return self.log.read()[-4000:]

    def cluster(self):
        with urllib.request.urlopen(self.url + "/api/v1/cluster", timeout=5) as r:
            return json.loads(r.read())

    def owned(self):
        """Partitions this node says it owns; empty when it does not answer."""
        try:
            return {p["partition"] for p in self.cluster()["partitions"]}
        except (urllib.error.URLError, ConnectionError, OSError):
            return set()

    def grpc_counts(self, keys):
        """{key: (count, status)} through this node's gRPC port (Feast's ServingService)."""
        import grpc

        from fsapp.grpc.protos.feast.serving import ServingService_pb2 as pb
        from fsapp.grpc.protos.feast.serving import ServingService_pb2_grpc as pb_grpc
        from fsapp.grpc.protos.feast.types import Value_pb2 as vpb

        with grpc.insecure_channel(f"127.0.0.1:{self.grpc_port}") as ch:
            resp = pb_grpc.ServingServiceStub(ch).GetOnlineFeatures(pb.GetOnlineFeaturesRequest(
                features=pb.FeatureList(val=["account_totals:n_payments"]),
                entities={"account_id": vpb.RepeatedValue(val=[vpb.Value(int64_val=k) for k in keys])}), timeout=10)
        status = {1: "PRESENT", 2: "NULL_VALUE", 3: "NOT_FOUND", 4: "OUTSIDE_MAX_AGE"}
        col = resp.results[1]
        return {k: (v.int64_val, status.get(st, st)) for k, v, st in zip(keys, col.values, col.statuses)}

    def counts(self, keys, local=True):
        """{key: (count, status)} from this node's own state (`X-Fstore-Local`),
        or through it (local=False: keys of other owners read from them)."""
        body = json.dumps({"features": ["account_totals:n_payments"], "entities": {"account_id": keys}}).encode()
        headers = {"Content-Type": "application/json", **({"X-Fstore-Local": "1"} if local else {})}
        req = urllib.request.Request(self.url + "/api/v1/features/online", data=body, headers=headers)
        with urllib.request.urlopen(req, timeout=5) as r:
            doc = json.loads(r.read())
            self.forwarded_to = r.headers.get("X-Fstore-Forwarded")
        return dict(zip(keys, zip(doc["results"][1]["values"], doc["results"][1]["statuses"])))


def produce(broker, n, start, expected):
    p = broker.producer(partitioner="murmur2_random")
    t = time.time_ns() // 1000 - 600_000_000
    for i in range(start, start + n):
        a = (i * 7) % KEYS
        p.produce(TOPIC, json.dumps({"account_id": a, "amount": 1.0, "ts": t + i}).encode(), key=str(a).encode())
        expected[a] = expected.get(a, 0) + 1
        if i % 1000 == 0:
            p.poll(0)
    p.flush(30)


class StaleWatch:
    """Polls every node for every key while the group changes: a key read
    PRESENT from a node that did not own its partition (before nor after the
    read) is stale, and so is a count below one already read (a partition's
    replay in progress); a count above the truth is a double count."""

    def __init__(self, nodes, expected):
        self.nodes, self.expected = nodes, expected
        self.bad, self.reads, self.through = [], 0, 0
        self.best: dict[int, int] = {}  # the highest PRESENT count read per key (counts only grow)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        keys = list(range(KEYS))
        while not self._stop.is_set():
            for node in self.nodes:
                if node.proc.poll() is not None:
                    continue
                before = node.owned()
                try:
                    got = node.counts(keys)
                except (urllib.error.URLError, ConnectionError, OSError):
                    continue
                owned = before | node.owned()
                self.reads += 1
                for k, (value, status) in got.items():
                    if status == "PRESENT" and (partition_for(k, PARTS) not in owned or value > self.expected[k]):
                        self.bad.append((node.url, k, value, self.expected[k], sorted(owned)))
                self._went_back(node.url, got)
                try:  # through the node: other owners' keys forwarded to them; never above the truth
                    through = node.counts(keys, local=False)
                except (urllib.error.URLError, ConnectionError, OSError):
                    continue
                self.through += 1
                self.bad.extend((node.url, "through", k, v, self.expected[k]) for k, (v, st) in through.items()
                                if st == "PRESENT" and v > self.expected[k])
                self._went_back(f"{node.url} through", through)
            time.sleep(0.01)

    def _went_back(self, where, got):
        for k, (value, status) in got.items():
            if status != "PRESENT":
                continue
            if value < self.best.get(k, 0):
                self.bad.append((where, "went back", k, value, self.best[k]))
            self.best[k] = max(self.best.get(k, 0), value)

    def stop(self):
        self._stop.set()
        self._thread.join(10)
        return self.bad


def wait_for(cond, timeout_s, what):
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if cond():
                return
        except (urllib.error.URLError, ConnectionError, OSError, NoOwner):
            pass
        assert time.monotonic() < deadline, what()
        time.sleep(0.1)


def all_live(nodes, want):
    """Each node owns want[i] partitions, together all of them, all live."""
    docs = [n.cluster() for n in nodes]
    parts = [p for d in docs for p in d["partitions"]]
    return (sorted(len(d["partitions"]) for d in docs) == sorted(want)
            and sorted(p["partition"] for p in parts) == list(range(PARTS))
            and all(p["state"] == "live" for p in parts))


def assert_served_by_owners(nodes, expected):
    """Each node's own state holds exactly its partitions' keys; through any
    node every key reads its exact count (the others' from their owners)."""
    router = Router([n.url for n in nodes])
    assert router.partitions == PARTS
    everything = {k: (expected[k], "PRESENT") for k in range(KEYS)}
    for node in nodes:
        got = node.counts(list(range(KEYS)))
        for k in range(KEYS):
            if router.owner(k) == node.url:
                assert got[k] == (expected[k], "PRESENT"), (node.url, k, got[k], expected[k])
            else:
                assert got[k][1] == "NOT_FOUND", (node.url, k, got[k])
        doc = node.cluster()
        assert sorted(m["url"] for m in doc["members"]) == sorted(n.url for n in nodes), doc["members"]
        # each node reads the others' claims from the members topic: a claim just
        # published (a restarted node's, first without partitions) reaches it soon after
        wait_for(lambda: {int(p): url for p, url in node.cluster()["owners"][TOPIC].items()} == router.owners, 5,
                 lambda: f"{node.url} lists owners {node.cluster()['owners']}, the others {router.owners}")
        # a node's workers renew what they know of the owners every second
        others = {router.owner(k) for k in range(KEYS)} - {node.url}
        wait_for(lambda: node.counts(list(range(KEYS)), local=False) == everything
                 and set((node.forwarded_to or "").split(",")) - {""} == others, 5,
                 lambda: f"{node.url} does not answer for every key: {node.counts(list(range(KEYS)), local=False)}")
    router.close()


def test_three_nodes_one_killed_and_restarted_serve_exact_counts_and_never_stale(kafka_broker, tmp_path):
    kafka_broker.create_topic(TOPIC, partitions=PARTS)
    expected = {}
    produce(kafka_broker, 4000, 0, expected)
    nodes = [Node(tmp_path, name, kafka_broker.bootstrap, grpc_port=free_port() if name == "b" else 0)
             for name in "abc"]
    a, rest = nodes[0], nodes[1:]
    logs = lambda: "\n".join(n.text() for n in nodes)  # noqa: E731
    watch = None
    try:
        for n in nodes:
            n.start()
        for n in nodes:
            n.wait_up()
        wait_for(lambda: all_live(nodes, [2, 2, 2]), 90, lambda: f"no 2+2+2 group: {logs()}")
        assert_served_by_owners(nodes, expected)
        assert a.cluster()["group_id"] == "g-scaleout" and a.cluster()["node"] == f"127.0.0.1:{a.port}"

        # kill -9 node a: the others own its partitions after the session timeout and rebuild them
        watch = StaleWatch(nodes, expected)
        killed = time.monotonic()
        a.kill9()
        wait_for(lambda: all_live(rest, [3, 3]), 60, lambda: f"b and c did not take over: {logs()}")
        takeover_s = time.monotonic() - killed
        everything = {k: (expected[k], "PRESENT") for k in range(KEYS)}
        for n in rest:  # through either survivor, every key, exact
            wait_for(lambda: n.counts(list(range(KEYS)), local=False) == everything, 30,
                     lambda: f"{n.url} does not answer every key after the takeover: {n.cluster()}")

        # a comes back (its old state on disk): after the rebalance each key has one owner, exact
        produce(kafka_broker, 1200, 4000, expected)
        restarted = time.monotonic()
        a.start()
        a.wait_up()
        up_s = time.monotonic() - restarted
        wait_for(lambda: all_live(nodes, [2, 2, 2]), 60, lambda: f"no 2+2+2 group again: {logs()}")
        rejoin_s = time.monotonic() - restarted
        wait_for(lambda: all(v == (expected[k], "PRESENT") for n in nodes
                             for k, v in n.counts(list(range(KEYS))).items() if partition_for(k, PARTS) in n.owned()),
                 20, lambda: "owners did not catch up")
        bad = watch.stop()
        assert watch.reads > 20 and watch.through > 20 and not bad, bad[:5]
        assert_served_by_owners(nodes, expected)
        # Feast's gRPC reads through any node too (b's gRPC port; 2/3 of the keys forwarded)
        b = nodes[1]
        wait_for(lambda: b.grpc_counts(list(range(KEYS))) == {k: (expected[k], "PRESENT") for k in range(KEYS)}, 10,
                 lambda: f"gRPC through b: {b.grpc_counts(list(range(KEYS)))}")
        print(f"takeover after kill -9: {takeover_s:.1f} s (session.timeout.ms 6000); restarted node up in "
              f"{up_s:.1f} s, 2+2+2 live {rejoin_s:.1f} s after its start; {watch.reads} polls, none stale")
    finally:
        if watch is not None:
            watch.stop()
        for n in nodes:
            n.stop()
