"""Online reads through any node of a Kafka group (`kafka.assign: group`,
docs/kafka.md "Scale-out").

Each node holds the keys of its own partitions. Asked for keys whose
partition another node owns (by the claims on the members topic,
fsapp.engine.members, listed as `owners` in GET /api/v1/cluster), a node
answers its own rows from its state and asks each owner for the others —
`POST /api/v1/features/online` on the owner's peer port (fsapp.serve.peer:
threads, so two nodes' synchronous workers never wait on each other) with
those rows only and `X-Fstore-Local: 1`,
which makes the owner answer from its own state (no second hop) — then puts
the owners' values, statuses and event times in place. A key's partition is
the producer's: Kafka's default partitioner over the key's text
(fsapp.engine.cluster.partition_for). An owner that does not answer leaves
its rows as this node has them (NOT_FOUND), and the response says so in
`X-Fstore-Forward-Failed`; `X-Fstore-Forwarded` names the owners asked.
Keys of a partition this node is rebuilding read NOT_FOUND until it is live
(fsapp.engine.cluster); `X-Fstore-Recovering` names those partitions
("topic/partition", as GET /api/v1/cluster lists them).
"""
from __future__ import annotations

import json
import logging
import threading
import time

from fscore.errors import FStoreError
from fsapp.engine.cluster import partition_for
from fsapp.sdk.client import Client

log = logging.getLogger("fstore.api")

LOCAL_HEADER = "X-Fstore-Local"
# how long a worker trusts the owners it read (one engine round trip to renew);
# shorter while a group member knows no owners yet (a start, a rebalance)
REFRESH_S, UNSETTLED_S, NOT_GROUP_S = 1.0, 0.1, 5.0


class _Route:
    """One consumed topic: the key columns it is partitioned by, its
    partition count and each partition's owner."""

    __slots__ = ("topic", "key", "partitions", "owners")

    def __init__(self, topic: str, key: list[str], partitions: int, owners: dict[int, str]):
        self.topic, self.key, self.partitions, self.owners = topic, key, partitions, owners


class ReadForwarder:
    """Completes an online answer with the rows other nodes own."""

    def __init__(self, backend, *, timeout_s: float = 2.0):
        self.backend = backend
        self.timeout_s = timeout_s
        self._routes: list[_Route] | None = None
        self._self_url: str | None = None
        self._peers: dict[str, str] = {}
        self._recovering: set = set()  # (topic, partition) this node is rebuilding
        self._checked = 0.0
        self._ttl = 0.0
        self._lock = threading.Lock()
        self._clients: dict[str, Client] = {}  # owner URL -> its client
        self.forwarded = self.failures = 0

    def _refresh(self) -> list[_Route] | None:
        now = time.monotonic()
        if now - self._checked < self._ttl:
            return self._routes
        with self._lock:
            if now - self._checked < self._ttl:
                return self._routes
            try:
                doc = self.backend.cluster()
            except Exception as e:  # noqa: BLE001 - the engine restarting: answer locally meanwhile
                log.debug("forwarding: no cluster document (%s)", e)
                doc = None
            group = bool(doc) and doc.get("mode") == "group"
            routes = None
            if group and doc.get("owners"):
                routes = []
                for topic, info in (doc.get("topics") or {}).items():
                    owners = {int(p): url for p, url in (doc["owners"].get(topic) or {}).items()}
                    if info.get("key") and info.get("partitions") and owners:
                        routes.append(_Route(topic, info["key"], int(info["partitions"]), owners))
            self._ttl = REFRESH_S if routes else UNSETTLED_S if group else NOT_GROUP_S
            self._peers = {m["url"]: m["peer"] for m in (doc or {}).get("members") or () if m.get("peer")}
            self._recovering = {(p.get("topic"), p.get("partition")) for p in (doc or {}).get("partitions") or ()
                                if p.get("state") == "recovering"}
            self._routes, self._self_url, self._checked = routes or None, (doc or {}).get("url"), now
            return self._routes

    def plan(self, entities: dict, recovering: list | None = None) -> dict[str, list[int]] | None:
        """{owner URL: the rows of `entities` whose partition it owns}, for
        the owners other than this node; None when nothing is to be asked.
        `recovering`: gets "topic/partition" of each asked key's partition
        this node is rebuilding (those keys read NOT_FOUND meanwhile)."""
        routes = self._refresh()
        if routes is None:
            return None
        route = next((r for r in routes if all(k in entities for k in r.key)), None)
        if route is None:
            return None
        remote: dict[str, list[int]] = {}
        rebuilding = {p for t, p in self._recovering if t == route.topic} if recovering is not None else ()
        cols = [entities[k] for k in route.key]
        for i, key in enumerate(zip(*cols)):
            if any(k is None or isinstance(k, (float, bool, dict, list)) for k in key):
                continue  # not a key a producer sends as text: this node's answer stands
            p = partition_for(key if len(key) > 1 else key[0], route.partitions)
            url = route.owners.get(p)
            if url is not None and url != self._self_url:
                remote.setdefault(url, []).append(i)
            elif p in rebuilding:
                recovering.append(f"{route.topic}/{p}")
        return remote or None

    def fill(self, doc: dict, remote: dict[str, list[int]], args: tuple, authorization: str | None) -> list[str]:
        """Puts each owner's answer for its rows into `doc` (this node's
        answer, Feast's column-major shape); returns the owners that failed."""
        features, service, entities, as_of, full = args
        failed = []
        for url, rows in remote.items():
            body = {"entities": {c: [vals[i] for i in rows] for c, vals in entities.items()},
                    "full_feature_names": bool(full)}
            if service is not None:
                body["feature_service"] = service
            else:
                body["features"] = features
            if as_of is not None:
                body["as_of"] = as_of
            try:
                got = self._post(self._peers.get(url, url), body, authorization)
                _splice(doc, got, rows)
                self.forwarded += len(rows)
            except (FStoreError, OSError, ValueError, KeyError, IndexError) as e:  # refused, unreachable, odd answer
                self.failures += 1
                failed.append(url)
                log.warning("forwarding %d row(s) to their owner %s failed: %s", len(rows), url, e)
        return failed

    def complete(self, args: tuple, text, authorization: str | None, resp):
        """`text`, this node's answer to the online read `args` (features,
        feature_service, entities, as_of, full_feature_names), with the rows
        of other owners' keys filled in from them."""
        recovering: list[str] = []
        remote = self.plan(args[2], recovering)
        if recovering:
            resp.set_header("X-Fstore-Recovering", ",".join(sorted(set(recovering))))
        if remote is None:
            return text
        doc = json.loads(text)
        failed = self.fill(doc, remote, args, authorization)
        resp.set_header("X-Fstore-Forwarded", ",".join(sorted(remote)))
        if failed:
            resp.set_header("X-Fstore-Forward-Failed", ",".join(sorted(failed)))
        out = json.dumps(doc, separators=(",", ":"))
        return out.encode() if isinstance(text, bytes) else out

    def _post(self, url: str, body: dict, authorization: str | None) -> dict:
        client = self._clients.get(url)
        if client is None:  # per thread keep-alive, a closed one retried once (the SDK's transport)
            client = self._clients.setdefault(url, Client(url, timeout=self.timeout_s))
        headers = {LOCAL_HEADER: "1", **({"Authorization": authorization} if authorization else {})}
        data, _ = client.request("POST", "/api/v1/features/online", json.dumps(body).encode(), headers=headers)
        return json.loads(data)


def _splice(doc: dict, got: dict, rows: list[int]) -> None:
    """Puts the owner's answer for `rows` into `doc`, column by column."""
    if got["metadata"]["feature_names"] != doc["metadata"]["feature_names"]:
        raise ValueError(f"the owner answered other features ({got['metadata']['feature_names']}): its "
                         "definitions differ from this node's; apply the same repo on every node")
    for mine, theirs in zip(doc["results"], got["results"]):
        for field in ("values", "statuses", "event_timestamps"):
            if field in mine and field in theirs:
                col, src = mine[field], theirs[field]
                for k, i in enumerate(rows):
                    col[i] = src[k]
