"""Feature logging: every online response of the configured feature services,
written asynchronously to Parquet files or a Kafka topic, so a model's
training set can be rebuilt from exactly what it was served.

    feature_logging:                 # in fstore.yaml
      services: fraud_v1, churn_v2   # feature services to log
      path: data/feature_log         # Parquet (default), relative to the repo
      topic: fstore-feature-log      # instead: Kafka (needs kafka.bootstrap_servers)
      flush_rows: 10000              # responses per Parquet file at most
      flush_seconds: 1.0

What is logged is the response exactly as it was sent (its JSON text), with
a request id, the feature service, the time (µs UTC) and the number of entity
key columns: one Parquet row / Kafka message per response. `explode` and
`load_feature_log` turn that into one row per entity row:
    request_id, feature_service, logged_at, <entity key columns>,
    <features> (values), <feature>__status
PERF: the request thread only queues the text it already encoded, and the
writer thread appends four scalars per response, so logging costs a few
microseconds of GIL time per response (parsing happens when the log is read).
Parquet files go to <path>/service=<name>/part-<pid>-<n>.parquet. When the
bounded queue is full, responses are dropped and counted (`dropped`), never
blocking serving.
"""
from __future__ import annotations

import atexit
import json
import os
import queue
import threading
import time
import uuid

import pyarrow as pa
import pyarrow.parquet as pq

from fsapp.registry.errors import RepoError

QUEUE_LIMIT = 10_000  # responses waiting to be written; beyond, drop (and count) rather than block serving


class FeatureLogConfig:
    def __init__(self, services, path, topic=None, flush_rows=10_000, flush_seconds=1.0):
        self.services = frozenset(services)
        self.path = path
        self.topic = topic
        self.flush_rows = int(flush_rows)
        self.flush_seconds = float(flush_seconds)

    @classmethod
    def from_repo(cls, repo) -> "FeatureLogConfig | None":
        section = repo.config.get("feature_logging")
        if not section:
            return None
        def at(*keys: str) -> str:  # "<fstore.yaml> line N: feature_logging", N the line of the setting
            return f"{repo.config_where('feature_logging', *keys)}: feature_logging"

        where = at()
        if not isinstance(section, dict):
            raise RepoError(f"{where}: expected a mapping (services: ..., path: ...)")
        unknown = sorted(set(section) - {"services", "path", "topic", "flush_rows", "flush_seconds"})
        if unknown:
            raise RepoError(f"{where}: unknown key(s) {', '.join(unknown)}")
        services = section.get("services")
        if isinstance(services, str):
            services = [s.strip() for s in services.split(",") if s.strip()]
        elif services is not None and not (isinstance(services, list) and all(isinstance(s, str) for s in services)):
            raise RepoError(f"{at('services')}: services is a feature service name, a comma-separated list or a "
                            f"YAML list of names, got {services!r}")
        if not services:
            raise RepoError(f"{at('services')}: name the feature services to log, e.g. services: fraud_v1")
        path = str(section.get("path") or "data/feature_log")
        if not os.path.isabs(path):
            path = str(repo.root / path)
        topic = section.get("topic")
        if topic and not (repo.config.get("kafka") or {}).get("bootstrap_servers"):
            raise RepoError(f"{at('topic')}: topic needs kafka.bootstrap_servers; or drop topic to log to Parquet")
        return cls(services, path, topic, section.get("flush_rows", 10_000), section.get("flush_seconds", 1.0))


def explode(request_id: str, service: str, logged_at: int, n_keys: int, response: dict) -> dict:
    """One logged response → column-major rows, one per entity row (its first
    `n_keys` results are the entity key columns)."""
    names = response["metadata"]["feature_names"]
    results = response["results"]
    n = len(results[0]["values"]) if results else 0
    cols = {"request_id": [request_id] * n, "feature_service": [service] * n, "logged_at": [logged_at] * n}
    for i, (name, res) in enumerate(zip(names, results)):
        cols[name] = res["values"]
        if i >= n_keys:
            cols[f"{name}__status"] = res["statuses"]
    return cols


class FeatureLogger:
    def __init__(self, config: FeatureLogConfig, kafka_servers: str | None = None):
        self.config = config
        self.dropped = 0
        self.logged = 0
        self._queue: queue.Queue = queue.Queue(maxsize=QUEUE_LIMIT)
        self._producer = None
        if config.topic:
            from confluent_kafka import Producer
            self._producer = Producer({"bootstrap.servers": kafka_servers, "linger.ms": 50})
        self._files = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fstore-feature-log", daemon=True)
        self._thread.start()
        atexit.register(self.close)  # a stopping worker writes what it holds

    def wants(self, service: str | None) -> bool:
        return service is not None and service in self.config.services

    def log_encoded(self, service: str, n_keys: int, text: str) -> str:
        """Queues a response's JSON text; returns its request id. Never blocks."""
        request_id = uuid.uuid4().hex
        try:
            self._queue.put_nowait((request_id, service, time.time_ns() // 1000, n_keys, text))
        except queue.Full:
            self.dropped += 1
        return request_id

    def _run(self) -> None:
        pending: dict[str, dict[str, list]] = {}
        count = 0
        last = time.monotonic()
        while not self._stop.is_set() or not self._queue.empty():
            # wake every 50 ms and drain what queued meanwhile: a wake-up per
            # response would hand the GIL back and forth with the request thread
            self._stop.wait(0.05)
            while True:
                try:
                    request_id, service, at, n_keys, text = self._queue.get_nowait()
                except queue.Empty:
                    break
                if self._producer is not None:
                    record = (f'{{"request_id":"{request_id}","feature_service":{json.dumps(service)},'
                              f'"logged_at":{at},"n_keys":{n_keys},"response":{text}}}')
                    self._producer.produce(self.config.topic, record.encode(), key=request_id.encode())
                else:
                    acc = pending.setdefault(service, {"request_id": [], "feature_service": [], "logged_at": [],
                                                       "n_keys": [], "response": []})
                    acc["request_id"].append(request_id)
                    acc["feature_service"].append(service)
                    acc["logged_at"].append(at)
                    acc["n_keys"].append(n_keys)
                    acc["response"].append(text)
                    count += 1
                self.logged += 1
            if self._producer is not None:
                self._producer.poll(0)
            if pending and (count >= self.config.flush_rows or time.monotonic() - last >= self.config.flush_seconds
                            or self._stop.is_set()):
                self._write(pending)
                pending, count, last = {}, 0, time.monotonic()
        if pending:
            self._write(pending)
        if self._producer is not None:
            self._producer.flush(10)

    def _write(self, pending: dict) -> None:
        for service, cols in pending.items():
            table = pa.table(cols)
            d = os.path.join(self.config.path, f"service={service}")
            os.makedirs(d, exist_ok=True)
            self._files += 1
            final = os.path.join(d, f"part-{os.getpid()}-{self._files:06d}.parquet")
            tmp = final + ".tmp"
            pq.write_table(table, tmp)
            os.replace(tmp, final)  # readers never see half a file

    def close(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._thread.join(timeout)


def explode_record(record: dict) -> dict:
    """A logged record (a Parquet row or a Kafka message, parsed) → rows."""
    return explode(record["request_id"], record["feature_service"], record["logged_at"], record["n_keys"],
                   json.loads(record["response"]) if isinstance(record["response"], str) else record["response"])


def load_feature_log(path: str, service: str):
    """The logged responses of one service as a pandas DataFrame, one row per
    entity row served, ready to join with labels on the entity keys and time."""
    import pandas as pd
    d = os.path.join(path, f"service={service}")
    files = sorted(f for f in os.listdir(d) if f.endswith(".parquet")) if os.path.isdir(d) else []
    frames = []
    for f in files:
        for record in pq.read_table(os.path.join(d, f)).to_pylist():
            frames.append(pd.DataFrame(explode_record(record)))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
