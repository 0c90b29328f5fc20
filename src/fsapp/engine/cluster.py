"""Scale-out on Kafka (`kafka.assign: group`, DESIGN §7): which keys this
node owns, and Kafka's own partitioner for clients that route to the owner.

Each node of a consumer group owns the partitions Kafka assigns it, and so
the entity keys whose events arrive on them. `PartitionKeys` remembers, per
online view, the partition each key's events came from (a tag per table
row), so that a revoke drops exactly those keys — table rows and window
state — before the revoke callback returns: a revoked key reads NOT_FOUND at
once, never a stale PRESENT. `PartitionProgress` tells a partition that is
being rebuilt (`recovering`) from one that is caught up (`live`); the keys of
a recovering partition are hidden from readers (`Table.hide_rows`: they read
NOT_FOUND, never the partial values of a replay in progress) until it is live.

`murmur2` / `partition_for` are the Java client's default partitioner
(`Utils.toPositive(Utils.murmur2(key)) % partitions`), which librdkafka
producers use with `partitioner: murmur2_random`.
"""
from __future__ import annotations

import logging

import numpy as np

from fsapp.engine.runtime import unique_ints

log = logging.getLogger("fstore.kafka")

NO_PARTITION = -1  # a row whose events did not come from Kafka in this process


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 (org.apache.kafka.common.utils.Utils.murmur2): a
    signed 32-bit int, as the Java client returns it."""
    m, r = 0x5BD1E995, 24
    length = len(data)
    h = (0x9747B28C ^ length) & 0xFFFFFFFF
    n4 = length & ~3
    for i in range(0, n4, 4):
        k = data[i] | data[i + 1] << 8 | data[i + 2] << 16 | data[i + 3] << 24
        k = (k * m) & 0xFFFFFFFF
        k ^= k >> r
        k = (k * m) & 0xFFFFFFFF
        h = ((h * m) & 0xFFFFFFFF) ^ k
    rest = length & 3
    if rest == 3:
        h ^= data[n4 + 2] << 16
    if rest >= 2:
        h ^= data[n4 + 1] << 8
    if rest >= 1:
        h ^= data[n4]
        h = (h * m) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * m) & 0xFFFFFFFF
    h ^= h >> 15
    return h - (1 << 32) if h & 0x80000000 else h


def key_bytes(key) -> bytes:
    """The message key a producer is expected to send for an entity key: its
    text in UTF-8 (`42` → b"42"); a composite key's parts joined by '|'."""
    if isinstance(key, bytes):
        return key
    if isinstance(key, (tuple, list)):
        return "|".join(str(k) for k in key).encode()
    if isinstance(key, bool) or not isinstance(key, (int, str, np.integer)):
        raise TypeError(f"an entity key to route is an integer or text, got {type(key).__name__}")
    return str(key).encode()


def partition_for(key, partitions: int) -> int:
    """The partition the Java client's default partitioner (and librdkafka's
    murmur2_random) sends a keyed message to."""
    if partitions < 1:
        raise ValueError(f"a topic has at least one partition, got {partitions}")
    return (murmur2(key_bytes(key)) & 0x7FFFFFFF) % partitions


def tags_of(store: dict, rt) -> np.ndarray:
    """`store`'s partition tags of `rt`'s rows (int32 by row id), grown to the
    table's capacity (new rows NO_PARTITION)."""
    key = (rt.name, rt.version)
    tags = store.get(key)
    cap = rt.table.capacity
    if tags is None or tags.size < cap:
        grown = np.full(cap, NO_PARTITION, dtype=np.int32)
        if tags is not None:
            grown[:tags.size] = tags
        tags = store[key] = grown
    return tags


_NONE = np.zeros(0, dtype=np.int32)


class PartitionKeys:
    """Per online view, the Kafka partition of each table row's events
    (int32 by row id; NO_PARTITION for none). Written by the engine's apply
    hook for Kafka batches only; read by `drop`. `tags`: the store to keep
    them in (the engine's `row_partitions`, which its checkpoints and its
    replay keep; default: one of its own, in memory)."""

    def __init__(self, tags: dict | None = None):
        self.tags: dict[tuple[str, int], np.ndarray] = {} if tags is None else tags
        self.split: dict[str, int] = {}  # view -> keys seen from a second partition (not partition-aligned)
        self._evicted: dict[tuple[str, int], int] = {}  # view -> evictions (max_keys, TTL) seen by the last note
        # per view, the partitions of its topic being rebuilt (set by the ingest
        # thread, a new dict each time): their keys' rows are hidden from readers.
        # Per view, not per number: partition 1 of one topic is not partition 1 of another
        self.recovering: dict[tuple[str, int], np.ndarray] = {}

    def _of(self, rt) -> np.ndarray:
        return tags_of(self.tags, rt)

    def set_recovering(self, by_view: dict) -> None:
        """{runtime: partitions of its topic now recovering} for every view of
        the consumed topics (a view left out has none)."""
        self.recovering = {(rt.name, rt.version): np.asarray(sorted(ps), dtype=np.int32)
                           for rt, ps in by_view.items() if ps}

    def recovering_of(self, rt) -> np.ndarray:
        return self.recovering.get((rt.name, rt.version), _NONE)

    def before(self, rt) -> None:
        """Called under the engine lock before a Kafka batch goes into `rt`:
        while a partition of its topic is recovering, the rows the batch
        creates are hidden from the first write on (`note` shows those of live
        partitions; a reader never sees a replayed key's first, partial value)."""
        if self.recovering_of(rt).size:
            rt.table.insert_hidden = True

    def note(self, rt, vb, row_partitions: np.ndarray) -> None:
        """Called under the engine lock after `vb` (a view's applied rows)
        went into `rt`: tags the rows of their keys with their partitions,
        and hides the rows of recovering partitions (shows the others)."""
        if not len(vb):
            return
        rows = rt.table.find_rows(vb.key_arg, encoded=vb.encoded)
        parts = np.asarray(row_partitions, dtype=np.int64)[vb.rows]
        found = rows >= 0  # a plain view's stale (older) row may not be written
        rows, parts = rows[found], parts[found]
        tags = self._of(rt)
        old = tags[rows]
        moved = rows[(old != NO_PARTITION) & (old != parts)]
        # a row freed by an eviction (max_keys, TTL) and taken by a key of
        # another partition is no split: after evictions, judge within the batch only
        stats = rt.table.stats()
        evicted = stats["evicted_capacity"] + stats["evicted_expired"]
        if self._evicted.get((rt.name, rt.version), 0) != evicted:
            self._evicted[(rt.name, rt.version)] = evicted
            moved = moved[:0]
        # ... or within this batch (PERF: one sort of (row, partition) pairs)
        pairs = unique_ints((rows << 20) | parts)
        of_pair = pairs >> 20
        moved = unique_ints(moved, of_pair[1:][of_pair[1:] == of_pair[:-1]])
        if moved.size:
            n = int(moved.size)
            first = rt.name not in self.split
            self.split[rt.name] = self.split.get(rt.name, 0) + n
            if first:
                log.error("kafka: feature view %s gets events for one key from several partitions (%d key(s) so "
                          "far): it is not keyed like its topic, so in assign: group each node holds partial "
                          "values of it; see docs/kafka.md (scale-out)", rt.name, n)
        tags[rows] = parts
        recovering = self.recovering_of(rt)
        if recovering.size:
            hide = np.isin(parts, recovering)
            rt.table.hide_rows(rows[hide])
            rt.table.show_rows(rows[~hide])

    def reveal(self, runtimes, partitions: set[int]) -> int:
        """These partitions caught up: their keys' rows read PRESENT again.
        Caller holds the engine lock; returns rows shown."""
        return self._set_visible(runtimes, partitions, True)

    def hide(self, runtimes, partitions: set[int]) -> int:
        """Hides the rows of these partitions' keys from readers (NOT_FOUND),
        keeping their state; returns rows hidden. Caller holds the engine lock."""
        return self._set_visible(runtimes, partitions, False)

    def _set_visible(self, runtimes, partitions: set[int], visible: bool) -> int:
        if not partitions:
            return 0
        changed = 0
        for rt in runtimes:
            rows = self._rows_of(rt, partitions)
            if rows.size:
                rows = rows[rt.table.rows_live(rows)]
                changed += rt.table.show_rows(rows) if visible else rt.table.hide_rows(rows)
        return changed

    def _rows_of(self, rt, partitions: set[int]) -> np.ndarray:
        """Row ids of `rt` tagged with any of these partitions."""
        tags = self._of(rt)
        rows = np.flatnonzero(np.isin(tags, np.asarray(sorted(partitions), dtype=np.int32))).astype(np.int64)
        return rows[rows < rt.table.capacity]

    def drop(self, runtimes, partitions: set[int]) -> int:
        """Deletes every key of these runtimes whose events came from
        `partitions` (table rows and window state); returns keys dropped.
        Caller holds the engine lock."""
        if not partitions:
            return 0
        gone = 0
        for rt in runtimes:
            tags = self._of(rt)
            rows = self._rows_of(rt, partitions)
            if not rows.size:
                continue
            live = rows[rt.table.rows_live(rows)]
            gone += rt.table.delete_rows(live)
            if rt.aggregated and live.size:
                rt._fit(int(live.max()) + 1)
                rt.reset_rows(live)
            tags[rows] = NO_PARTITION
        return gone

    def forget(self, runtimes) -> int:
        """Deletes every key of these runtimes and starts their window state
        afresh, its watermark included (the node owns none of the topic's
        partitions: a start, or an eager rebalance's revoke of them all);
        returns keys dropped. Caller holds the engine lock.

        The window state's lateness watermarks (one per partition) go with it;
        kept, a partition's would judge its own replay late."""
        from fscore.window import WindowView

        gone = 0
        for rt in runtimes:
            live = rt.table.live_rows()
            gone += rt.table.delete_rows(live)
            if rt.aggregated:
                if live.size:
                    rt._fit(int(live.max()) + 1)
                    rt.reset_rows(live)
                rt.windows = [w.empty_like(w.n_slots) for w in rt.windows]
                rt.epochs = None  # the next tick rewrites every key's values
            self.tags.pop((rt.name, rt.version), None)
        return gone


class PartitionProgress:
    """recovering → live per assigned partition: live once the engine's
    offset reaches the high watermark at assignment. That is the larger of
    what ListOffsets said at assignment and the first fetch response's high
    watermark (a fetch happens after the assignment, so it counts every
    message produced before it; tansu's ListOffsets answers were seen to
    fall short)."""

    def __init__(self):
        self.target: dict[str, int | None] = {}  # "topic/p" -> high watermark at assignment (None: not known yet)
        self.fetched: set[str] = set()  # partitions whose target a fetch response has confirmed
        self.live: set[str] = set()
        self.assigned_at: dict[str, float] = {}
        self.recovered_s: dict[str, float] = {}  # how long each partition took to become live

    def assign(self, key: str, high: int | None, now: float) -> None:
        self.target[key] = high
        self.fetched.discard(key)
        self.live.discard(key)
        self.assigned_at[key] = now
        self.recovered_s.pop(key, None)

    def revoke(self, key: str) -> None:
        self.target.pop(key, None)
        self.fetched.discard(key)
        self.live.discard(key)
        self.assigned_at.pop(key, None)
        self.recovered_s.pop(key, None)

    def update(self, key: str, offset: int | None, fetched_high: int | None, now: float) -> None:
        """With the engine's next offset and the high watermark of the latest
        fetch response (None before the first)."""
        if key not in self.target or key in self.live:
            return
        if key not in self.fetched:
            if fetched_high is None:
                return
            self.fetched.add(key)
            self.target[key] = max(self.target[key] or 0, fetched_high)
        if (offset or 0) >= self.target[key]:
            self.live.add(key)
            self.recovered_s[key] = now - self.assigned_at.get(key, now)
            log.info("kafka: partition %s is live (caught up to offset %d in %.2f s)", key, self.target[key],
                     self.recovered_s[key])

    def state(self, key: str) -> str:
        return "live" if key in self.live else "recovering"
