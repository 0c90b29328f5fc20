"""Feature logging: every online response of the configured feature services,
written asynchronously to Parquet files or a Kafka topic, so a model's
training set can be rebuilt from exactly what it was served.

    feature_logging:                 # in fstore.yaml
      services: fraud_v1, churn_v2   # feature services to log
      path: data/feature_log         # Parquet (default), relative to the repo
      topic: fstore-feature-log      # instead: Kafka (needs kafka.bootstrap_servers)
      flush_rows: 10000              # rows per Parquet file at most
      flush_seconds: 1.0

One logged row per entity row of a response:
    request_id, feature_service, logged_at (µs UTC), <entity key columns>,
    <features> (values; full names view__feature), <feature>__status
Parquet files go to <path>/service=<name>/part-<pid>-<n>.parquet. Logging
never blocks a request: rows go through a bounded queue to a background
thread; when the queue is full they are dropped and counted (`dropped`).
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
        where = f"{repo.root / 'fstore.yaml'}: feature_logging"
        if not isinstance(section, dict):
            raise RepoError(f"{where}: expected a mapping (services: ..., path: ...)")
        unknown = sorted(set(section) - {"services", "path", "topic", "flush_rows", "flush_seconds"})
        if unknown:
            raise RepoError(f"{where}: unknown key(s) {', '.join(unknown)}")
        services = section.get("services")
        if isinstance(services, str):
            services = [s.strip() for s in services.split(",") if s.strip()]
        if not services:
            raise RepoError(f"{where}: name the feature services to log, e.g. services: fraud_v1")
        path = str(section.get("path") or "data/feature_log")
        if not os.path.isabs(path):
            path = str(repo.root / path)
        topic = section.get("topic")
        if topic and not (repo.config.get("kafka") or {}).get("bootstrap_servers"):
            raise RepoError(f"{where}: topic needs kafka.bootstrap_servers; or drop topic to log to Parquet")
        return cls(services, path, topic, section.get("flush_rows", 10_000), section.get("flush_seconds", 1.0))


def response_rows(request_id: str, service: str, logged_at: int, response: dict, n_keys: int) -> dict:
    """Column-major rows (one per entity row) from a Feast-shaped response
    whose first `n_keys` results are the entity key columns."""
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

    def log(self, service: str, response: dict, n_keys: int) -> str:
        """Queues a response; returns its request id. Never blocks."""
        request_id = uuid.uuid4().hex
        try:
            self._queue.put_nowait((request_id, service, time.time_ns() // 1000, response, n_keys))
        except queue.Full:
            self.dropped += 1
        return request_id

    def _run(self) -> None:
        # PERF: rows are appended to plain Python column lists and turned into
        # one Arrow table per flush; building a table per response cost more
        # GIL time than the request it logged (measured in-process)
        pending: dict[str, dict[str, list]] = {}
        rows = 0
        last = time.monotonic()
        while not self._stop.is_set() or not self._queue.empty():
            # PERF: wake every 50 ms and drain what queued meanwhile: a wake-up
            # per response hands the GIL back and forth with the request thread
            self._stop.wait(0.05)
            items = []
            while True:
                try:
                    items.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            for request_id, service, at, response, n_keys in items:
                cols = response_rows(request_id, service, at, response, n_keys)
                if self._producer is not None:
                    self._produce(cols)
                else:
                    acc = pending.get(service)
                    if acc is not None and acc.keys() != cols.keys():  # the service changed: new file
                        self._write({service: acc})
                        acc = None
                    if acc is None:  # copies: a response's lists are shared between its features
                        pending[service] = {k: list(v) for k, v in cols.items()}
                    else:
                        for name, values in cols.items():
                            acc[name].extend(values)
                    rows += len(cols["request_id"])
                self.logged += 1
            if pending and (rows >= self.config.flush_rows or time.monotonic() - last >= self.config.flush_seconds
                            or self._stop.is_set()):
                self._write(pending)
                pending, rows, last = {}, 0, time.monotonic()
        if pending:
            self._write(pending)
        if self._producer is not None:
            self._producer.flush(10)

    def _produce(self, cols: dict) -> None:
        n = len(cols["request_id"])
        for i in range(n):
            self._producer.produce(self.config.topic, json.dumps({k: v[i] for k, v in cols.items()}).encode(),
                                   key=cols["request_id"][i].encode())
        self._producer.poll(0)

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


def load_feature_log(path: str, service: str):
    """The logged rows of one service as a pandas DataFrame (one row per
    entity row served), ready to join with labels on the entity keys and time."""
    import pandas as pd
    d = os.path.join(path, f"service={service}")
    files = sorted(f for f in os.listdir(d) if f.endswith(".parquet")) if os.path.isdir(d) else []
    if not files:
        return pd.DataFrame()
    return pa.concat_tables([pq.read_table(os.path.join(d, f)) for f in files],
                            promote_options="permissive").to_pandas()
