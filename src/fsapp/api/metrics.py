"""Prometheus metrics of one process, in the text exposition format 0.0.4.

A `MetricsRegistry` holds counters, gauges and histograms keyed by label
values. It is per process (gunicorn workers do not share memory), so it can
be turned into a JSON-able `snapshot()` and snapshots can be `merge`d: the
serving runtime can collect the workers' snapshots and expose their sum.
Counters and histograms add; gauges keep the most recent value.
"""
from __future__ import annotations

import bisect
import math
import threading
import time

# Request latency buckets (seconds): fine below 10 ms, where the target is.
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)


def _escape(v: str) -> str:
    return str(v).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(names: tuple[str, ...], values: tuple, extra: str = "") -> str:
    items = [f'{n}="{_escape(v)}"' for n, v in zip(names, values)]
    if extra:
        items.append(extra)
    return "{" + ",".join(items) + "}" if items else ""


def _num(x: float) -> str:
    if isinstance(x, float):
        if math.isinf(x):
            return "+Inf" if x > 0 else "-Inf"
        if math.isnan(x):
            return "NaN"
        return repr(x)
    return str(x)


class _Metric:
    kind = ""

    def __init__(self, name: str, help: str, labels: tuple[str, ...] = ()):
        self.name, self.help, self.label_names = name, help, tuple(labels)
        self._label_set = frozenset(self.label_names)
        self.values: dict[tuple, object] = {}

    def key(self, **labels) -> tuple:
        """A series' key, its labels checked: for the `*_key` updates."""
        return self._key(labels)

    def _key(self, labels: dict | None) -> tuple:
        labels = labels or {}
        if labels.keys() != self._label_set:
            raise ValueError(f"metric {self.name} takes labels {self.label_names}, got {sorted(labels)}")
        return tuple([str(labels[n]) for n in self.label_names])

    def header(self) -> list[str]:
        return [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}"]


class Counter(_Metric):
    kind = "counter"

    def inc(self, amount: float = 1, **labels) -> None:
        self.inc_key(self._key(labels), amount)

    def inc_key(self, k: tuple, amount: float = 1) -> None:
        """`inc` for a series' key from `key(...)` (checked once, reused)."""
        self.values[k] = self.values.get(k, 0) + amount

    def set(self, value: float, **labels) -> None:
        """For a counter kept elsewhere (e.g. a table's eviction count),
        copied in at scrape time."""
        self.values[self._key(labels)] = value

    def render(self) -> list[str]:
        return [f"{self.name}{_labels(self.label_names, k)} {_num(v)}" for k, v in sorted(self.values.items())]


class Gauge(_Metric):
    kind = "gauge"

    def set(self, value: float, **labels) -> None:
        self.values[self._key(labels)] = value

    render = Counter.render


class Histogram(_Metric):
    kind = "histogram"

    def __init__(self, name: str, help: str, labels: tuple[str, ...] = (), buckets=LATENCY_BUCKETS):
        super().__init__(name, help, labels)
        self.buckets = tuple(sorted(buckets))

    def observe(self, value: float, **labels) -> None:
        self.observe_key(self._key(labels), value)

    def observe_key(self, k: tuple, value: float) -> None:
        """`observe` for a series' key from `key(...)` (checked once, reused)."""
        state = self.values.get(k)
        if state is None:
            state = self.values[k] = {"counts": [0] * (len(self.buckets) + 1), "sum": 0.0}
        i = bisect.bisect_left(self.buckets, value)  # the first bucket with value <= bound
        state["counts"][i] += 1
        state["sum"] += value

    def render(self) -> list[str]:
        out = []
        for k, state in sorted(self.values.items()):
            running = 0
            for bound, n in zip(self.buckets + (math.inf,), state["counts"]):
                running += n
                le = 'le="' + _num(float(bound)) + '"'
                out.append(f"{self.name}_bucket{_labels(self.label_names, k, le)} {running}")
            out.append(f"{self.name}_sum{_labels(self.label_names, k)} {_num(state['sum'])}")
            out.append(f"{self.name}_count{_labels(self.label_names, k)} {running}")
        return out


class MetricsRegistry:
    def __init__(self):
        self.metrics: dict[str, _Metric] = {}
        self.lock = threading.Lock()  # gthread workers observe from several threads

    def _add(self, metric: _Metric) -> _Metric:
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

    def histogram(self, name: str, help: str, labels=(), buckets=LATENCY_BUCKETS) -> Histogram:
        return self._add(Histogram(name, help, labels, buckets))

    def render(self) -> str:
        with self.lock:
            lines = []
            for m in self.metrics.values():
                lines += m.header() + m.render()
        return "\n".join(lines) + "\n" if lines else ""

    # ---- sharing across processes

    def snapshot(self) -> dict:
        """JSON-able state: {name: {kind, help, labels, buckets?, values: [[label values, value]]}}."""
        with self.lock:
            out = {}
            for m in self.metrics.values():
                d = {"kind": m.kind, "help": m.help, "labels": list(m.label_names),
                     "values": [[list(k), v if m.kind != "histogram" else {"counts": list(v["counts"]),
                                                                             "sum": v["sum"]}]
                                for k, v in m.values.items()]}
                if isinstance(m, Histogram):
                    d["buckets"] = list(m.buckets)
                out[m.name] = d
            return out

    def merge(self, snapshot: dict) -> "MetricsRegistry":
        """Adds another process's snapshot into this registry."""
        with self.lock:
            for name, d in snapshot.items():
                kind, labels = d["kind"], tuple(d["labels"])
                if kind == "histogram":
                    m = self._add(Histogram(name, d["help"], labels, d["buckets"]))
                    if list(m.buckets) != list(d["buckets"]):
                        raise ValueError(f"histogram {name}: buckets differ between processes")
                else:
                    m = self._add((Counter if kind == "counter" else Gauge)(name, d["help"], labels))
                for key, v in d["values"]:
                    key = tuple(key)
                    if kind == "counter":
                        m.values[key] = m.values.get(key, 0) + v
                    elif kind == "gauge":
                        m.values[key] = v
                    else:
                        state = m.values.setdefault(key, {"counts": [0] * len(v["counts"]), "sum": 0.0})
                        state["counts"] = [a + b for a, b in zip(state["counts"], v["counts"])]
                        state["sum"] += v["sum"]
        return self


def merge_snapshots(snapshots) -> MetricsRegistry:
    reg = MetricsRegistry()
    for s in snapshots:
        reg.merge(s)
    return reg


class HttpMetrics:
    """The API's own metrics: latency per route and request counts by status."""

    def __init__(self, registry: MetricsRegistry | None = None):
        self.registry = registry or MetricsRegistry()
        self.latency = self.registry.histogram("fstore_http_request_duration_seconds",
                                               "Time to answer a request, by route", ("method", "route"))
        self.requests = self.registry.counter("fstore_http_requests_total",
                                              "Requests answered, by route and status", ("method", "route", "status"))
        self._keys: dict[tuple, tuple] = {}  # (method, route, status) -> series keys

    def render(self) -> str:
        """Prometheus text of these metrics (a shared subclass merges workers)."""
        return self.registry.render()

    def observe(self, method: str, route: str, status: int, started: float, ended: float | None = None) -> None:
        """One answered request, timed from `started` to `ended` (now when
        None; both `time.perf_counter()`)."""
        elapsed = (time.perf_counter() if ended is None else ended) - started
        # PERF: a series' label keys are checked once, then reused (the label
        # checks were ~10% of a 1x50 request's Python; benches/bench_serving.py)
        keys = self._keys.get((method, route, status))
        if keys is None:
            keys = self._keys[(method, route, status)] = (
                self.latency.key(method=method, route=route),
                self.requests.key(method=method, route=route, status=status))
        with self.registry.lock:
            self.latency.observe_key(keys[0], elapsed)
            self.requests.inc_key(keys[1])
