"""Prometheus metrics, through prometheus_client (text exposition 0.0.4).

Two kinds, kept apart because they live in different processes:

- `HttpMetrics`, the API's own latency histogram and request counter, are
  prometheus_client metrics. Under `fstore serve` every gunicorn worker runs
  them in prometheus_client's multiprocess mode (PROMETHEUS_MULTIPROC_DIR,
  set by the supervisor: each worker writes its values to its own mmap file)
  and `/metrics` sums every worker's files (fsapp.serve.shared_metrics);
  elsewhere (tests, an app mounted in another server) they are per process.
  PERF: an observation in multiprocess mode (a histogram bucket, its sum and
  a counter, each an mmap write under a lock) costs ~5 us of worker CPU, run
  after the response; the hand-written registry it replaced cost ~2 us plus
  a JSON snapshot file a second. benches/bench_serving.py (--quick, same
  machine, before/after twice) showed no change beyond its run-to-run noise.
- `MetricsRegistry` holds the store-side metrics of one process (the
  engine's: ingest, late events, evictions, freshness; fsapp.api.backend):
  counters and gauges whose values are mostly copied in at scrape time from
  counts kept elsewhere (a table's evictions, the Kafka source's counts), so
  it is a prometheus_client custom collector rather than a set of metrics
  that own their values.
"""
from __future__ import annotations

import threading
import time

from prometheus_client import CollectorRegistry, Counter as _PromCounter, Histogram as _PromHistogram
from prometheus_client import generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

# Request latency buckets (seconds): fine below 10 ms, where the target is.
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)


class _Series:
    """One counter or gauge of a MetricsRegistry: a value per label values."""

    kind = ""

    def __init__(self, name: str, help: str, labels: tuple[str, ...] = ()):
        self.name, self.help, self.label_names = name, help, tuple(labels)
        self._label_set = frozenset(self.label_names)
        self.values: dict[tuple, float] = {}

    def _key(self, labels: dict) -> tuple:
        if labels.keys() != self._label_set:
            raise ValueError(f"metric {self.name} takes labels {self.label_names}, got {sorted(labels)}")
        return tuple([str(labels[n]) for n in self.label_names])

    def set(self, value: float, **labels) -> None:
        """The value now; for a counter, a count kept elsewhere copied in at
        scrape time (e.g. a table's eviction count)."""
        self.values[self._key(labels)] = value

    def family(self):
        cls = CounterMetricFamily if self.kind == "counter" else GaugeMetricFamily
        fam = cls(self.name, self.help, labels=self.label_names)
        for key, value in sorted(self.values.items()):
            fam.add_metric(list(key), value)
        return fam


class Counter(_Series):
    kind = "counter"

    def inc(self, amount: float = 1, **labels) -> None:
        key = self._key(labels)
        self.values[key] = self.values.get(key, 0) + amount


class Gauge(_Series):
    kind = "gauge"


class MetricsRegistry:
    """Counters and gauges of one process, rendered by prometheus_client
    (it is a collector: `collect()` yields their families). Callers update
    under `lock` when several threads may (the engine's socket server)."""

    def __init__(self):
        self.metrics: dict[str, _Series] = {}
        self.lock = threading.Lock()

    def _add(self, metric: _Series) -> _Series:
        existing = self.metrics.get(metric.name)
        if existing is not None:
            if type(existing) is not type(metric) or existing.label_names != metric.label_names:
                raise ValueError(f"metric {metric.name} is already registered with another type or labels")
            return existing
        self.metrics[metric.name] = metric
        return metric

    def counter(self, name: str, help: str, labels=()) -> Counter:
        return self._add(Counter(name, help, labels))

    def gauge(self, name: str, help: str, labels=()) -> Gauge:
        return self._add(Gauge(name, help, labels))

    def collect(self):
        for m in list(self.metrics.values()):
            yield m.family()

    def render(self) -> str:
        with self.lock:
            return generate_latest(self).decode()


class HttpMetrics:
    """The API's own metrics: latency per route and request counts by status,
    in `registry` (a prometheus_client CollectorRegistry of their own, so
    several apps in one process do not collide)."""

    def __init__(self):
        self.registry = CollectorRegistry(auto_describe=True)
        self.latency = _PromHistogram("fstore_http_request_duration_seconds", "Time to answer a request, by route",
                                      ("method", "route"), buckets=LATENCY_BUCKETS, registry=self.registry)
        self.requests = _PromCounter("fstore_http_requests_total", "Requests answered, by route and status",
                                     ("method", "route", "status"), registry=self.registry)
        self._series: dict[tuple, tuple] = {}  # (method, route, status) -> (latency child, requests child)

    def render(self) -> str:
        """Prometheus text of these metrics (fsapp.serve.shared_metrics sums
        every worker's instead)."""
        return generate_latest(self.registry).decode()

    def observe(self, method: str, route: str, status: int, started: float, ended: float | None = None) -> None:
        """One answered request, timed from `started` to `ended` (now when
        None; both `time.perf_counter()`)."""
        elapsed = (time.perf_counter() if ended is None else ended) - started
        # PERF: a series' children are looked up once, then reused (label
        # checks were ~10% of a 1x50 request's Python; benches/bench_serving.py)
        series = self._series.get((method, route, status))
        if series is None:
            series = self._series[(method, route, status)] = (
                self.latency.labels(method, route), self.requests.labels(method, route, str(status)))
        series[0].observe(elapsed)
        series[1].inc()
