"""`GET /api/v1/stats`: the server's own metrics, summed up as JSON for the
web UI's live panels (fsapp/ui). Built from the very text `/metrics` serves
(the HTTP histogram summed over every worker, then the engine's counters and
gauges), parsed back by prometheus_client, so the panels and a Prometheus
scrape can never disagree. Rates are left to the caller: it has two samples
and their times, the server has one."""
from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

# the routes a lookup takes: their latency is what "serving latency" means
SERVING_ROUTES = frozenset({("POST", "/api/v1/features/online"), ("POST", "/get-online-features")})
PERCENTILES = (0.5, 0.95, 0.99)


def samples(metrics_text: str):
    """(name, labels, value) of every sample in a Prometheus text."""
    for family in text_string_to_metric_families(metrics_text):
        for s in family.samples:
            yield s.name, s.labels, s.value


def quantile(q: float, buckets: list[tuple[float, float]]) -> float | None:
    """Prometheus's histogram_quantile over cumulative (upper bound, count)
    pairs sorted by bound: linear within the bucket the rank falls in; the
    +Inf bucket answers its lower bound. None without observations."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if bound == float("inf"):
                return lower_bound
            if count == lower_count:
                return bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / (count - lower_count)
        lower_bound, lower_count = bound, count
    return lower_bound


def summarize(metrics_text: str, streams: list[dict], views: list[dict], health: dict, cluster: dict) -> dict:
    """The panels' numbers. `streams` and `views`: registry entries (as the
    API lists them), so that a stream nobody pushed to yet shows 0, not
    nothing, and each view's freshness is its source stream's. `health` and
    `cluster`: the backend's answers (the engine's late count; whether Kafka
    ingestion runs at all)."""
    pushed: dict[str, float] = {}
    late: dict[str, float] = {}
    lag_s: dict[str, float] = {}
    kafka_rows: dict[str, float] = {}
    dead: dict[str, float] = {}
    kafka_lag: dict[str, float] = {}
    rows: dict[str, float] = {}
    buckets: dict[float, float] = {}
    served = 0.0
    for name, labels, value in samples(metrics_text):
        if name == "fstore_ingest_rows_total":
            pushed[labels["stream"]] = value
        elif name == "fstore_late_events_total":
            late[labels["stream"]] = value
        elif name == "fstore_freshness_lag_seconds":
            lag_s[labels["stream"]] = value
        elif name == "fstore_kafka_ingested_rows_total":
            kafka_rows[labels["topic"]] = value
        elif name == "fstore_kafka_dead_letters_total":
            dead[labels["topic"]] = dead.get(labels["topic"], 0.0) + value
        elif name == "fstore_kafka_lag_messages":
            kafka_lag[f"{labels['topic']}/{labels['partition']}"] = value
        elif name == "fstore_online_rows":
            rows[labels["view"]] = value
        elif (labels.get("method"), labels.get("route")) in SERVING_ROUTES:
            if name == "fstore_http_request_duration_seconds_bucket":
                bound = float(labels["le"])
                buckets[bound] = buckets.get(bound, 0.0) + value
            elif name == "fstore_http_request_duration_seconds_count":
                served += value
    topic_of = {s["name"]: s.get("definition", {}).get("topic") for s in streams}
    stream_stats = {}
    for s in streams:
        name, topic = s["name"], topic_of.get(s["name"])
        stream_stats[name] = {
            "pushed": int(pushed.get(name, 0)), "kafka": int(kafka_rows.get(topic, 0)) if topic else 0,
            "late": int(late.get(name, 0)), "topic": topic,
            "freshness_s": lag_s.get(name)}  # None: no event seen yet
    view_stats = {}
    for v in views:
        source = v.get("definition", {}).get("source")
        over_stream = source in stream_stats
        view_stats[v["name"]] = {
            "version": v["version"], "source": source, "over_stream": over_stream,
            "freshness_s": lag_s.get(source) if over_stream else None,
            "keys": int(rows[f"{v['name']}@v{v['version']}"]) if f"{v['name']}@v{v['version']}" in rows else None}
    cumulative = sorted(buckets.items())
    latency = {f"p{round(q * 100)}_ms": (None if (x := quantile(q, cumulative)) is None else x * 1000)
               for q in PERCENTILES}
    return {
        "streams": stream_stats,
        "views": view_stats,
        "late_events": health.get("late_events"),  # the engine's own count, pushes and Kafka alike
        "dead_letters": {"total": int(sum(dead.values())), "by_topic": {t: int(n) for t, n in dead.items()}},
        "serving": {"requests": int(served), **latency},
        "kafka": {"mode": cluster.get("mode"),  # None: no Kafka ingestion in this server
                  "lag": {k: int(n) for k, n in sorted(kafka_lag.items())},
                  "lag_total": int(sum(kafka_lag.values())) if kafka_lag else None},
        "applied_lsn": health.get("applied_lsn"),
    }
