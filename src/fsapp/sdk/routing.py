"""`Router`: reads a key from the node that owns it, in a group of
`fstore serve` nodes consuming one topic with `kafka.assign: group`
(docs/kafka.md, scale-out).

    router = Router(["http://10.0.0.1:9094", "http://10.0.0.2:9094"])
    router.client_for(42).get_online_features(["account_totals:n_payments"], [{"account_id": 42}])

Each node publishes its partitions at GET /api/v1/cluster; a key's
partition is the producer's: Kafka's default partitioner (murmur2 of the
message key, which must be the entity key's text, e.g. b"42"). Call
`refresh()` after a rebalance (a node answers NOT_FOUND for keys it no
longer owns, and a partition is `recovering` until its owner caught up).
"""
from __future__ import annotations

from fsapp.engine.cluster import partition_for
from fsapp.sdk.client import Client
from fsapp.sdk.errors import ServiceUnavailable


class NoOwner(LookupError):
    """No node reports the key's partition (a rebalance in progress, or a node down)."""


class Router:
    def __init__(self, nodes: list[str], *, topic: str | None = None, api_key: str | None = None,
                 timeout: float = 10.0):
        if not nodes:
            raise ValueError("give the URL of at least one node")
        self.clients = {url: Client(url, api_key, timeout=timeout) for url in nodes}
        self.topic = topic
        self.owners: dict[int, str] = {}  # partition -> node URL
        self.states: dict[int, str] = {}  # partition -> recovering | live
        self.partitions: int | None = None
        self.refresh()

    def refresh(self) -> dict[int, str]:
        """Asks every node for its partitions; returns {partition: node URL}.
        Nodes that do not answer are left out (their partitions have no owner
        until the group reassigns them)."""
        owners, states, counts = {}, {}, {}
        for url, client in self.clients.items():
            try:
                doc = client.cluster()
            except (ServiceUnavailable, OSError):
                continue
            topics = doc.get("topics") or {}
            if self.topic is None and len(topics) > 1:
                raise ValueError(f"the nodes consume topics {sorted(topics)}: give Router(topic=...)")
            for p in doc.get("partitions") or []:
                if self.topic in (None, p["topic"]):
                    owners[p["partition"]] = url
                    states[p["partition"]] = p["state"]
            for t, info in topics.items():
                if self.topic in (None, t) and info.get("partitions"):
                    counts[t] = info["partitions"]
        if len(counts) == 1:
            self.partitions = next(iter(counts.values()))
        self.owners, self.states = owners, states
        return dict(owners)

    def partition_of(self, key) -> int:
        if not self.partitions:
            raise NoOwner("no node reported the topic's partition count yet; refresh() once the group has formed")
        return partition_for(key, self.partitions)

    def owner(self, key) -> str:
        """The URL of the node that owns `key` (NoOwner when none does)."""
        p = self.partition_of(key)
        url = self.owners.get(p)
        if url is None:
            raise NoOwner(f"no node owns partition {p} of the topic (rebalancing, or its node is down); "
                          "refresh() and try again")
        return url

    def client_for(self, key) -> Client:
        return self.clients[self.owner(key)]

    def close(self) -> None:
        for c in self.clients.values():
            c.close()
