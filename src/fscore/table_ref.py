"""Pure-Python twin of `fscore.table.Table`: a dict plus an injected clock.

It is the test oracle: same inputs, same outputs, same eviction order, so a
hypothesis state machine can run random operations on both and compare. It is
written for clarity, not speed.

Rules (identical in the Cython table):
- put: a row whose event_ts < now - ttl is not stored (stale on arrival);
  a row replaces the stored one for its key when (event_ts, created_ts) >=
  the stored pair, else it is ignored (late update).
- get: PRESENT when stored and event_ts >= now - ttl (ttl 0 = no limit);
  OUTSIDE_MAX_AGE when stored but older; NOT_FOUND otherwise. Values are only
  returned for PRESENT rows.
- when a new key arrives and the table holds `capacity` rows: it grows
  (`fscore.layout.next_capacity`: doubling while small, then by a quarter;
  at least to 16, at most to `max_capacity`) while
  capacity < max_capacity; else first every expired row is removed; if none
  was, the `max(1, capacity // 64)` oldest rows by (event_ts, encoded key)
  are evicted.
"""
from __future__ import annotations

import numpy as np

from fscore import _batch
from fscore._batch import BatchResult  # noqa: F401  (re-exported)
from fscore.layout import Layout, next_capacity
from fscore.schema import Schema

NOT_FOUND, PRESENT, OUTSIDE_MAX_AGE = 0, 1, 2


class RefTable:
    def __init__(self, schema: Schema, capacity: int | None = None, max_bytes: int | None = None,
                 ttl_us: int = 0, path=None, max_capacity: int | None = None):
        if capacity is None:
            lay = Layout.for_max_bytes(schema, max_bytes) if max_bytes else Layout(schema, 1 << 16)
        else:
            lay = Layout(schema, capacity)
        self.schema = schema
        self.capacity = lay.capacity
        self.ttl_us = int(ttl_us)
        self.rows: dict[bytes, tuple] = {}  # encoded key -> (ets, cts, values tuple, nulls tuple)
        self.evicted_capacity = 0
        self.evicted_expired = 0
        self.stale_on_arrival = 0
        self.hidden: set[bytes] = set()  # held keys readers do not see (hide / insert_hidden)
        self.insert_hidden = False
        self.set_max_capacity(max_capacity)

    def set_max_capacity(self, max_capacity: int | None) -> None:
        self.max_capacity = max(self.capacity, self.capacity if max_capacity is None else int(max_capacity))

    def grow(self, capacity: int) -> None:
        self.capacity = max(self.capacity, int(capacity))

    def __len__(self):
        return len(self.rows)

    def _expired(self, ets: int, now: int) -> bool:
        return self.ttl_us > 0 and ets < now - self.ttl_us

    def put_batch(self, keys, values=None, event_ts=None, created_ts=None, *, now: int, nulls=None) -> int:
        kcols, n = _batch.key_columns(self.schema, keys)
        ets, cts = _batch.timestamps(event_ts, created_ts, n)
        vals, masks = _batch.value_columns(self.schema, values, n, nulls)
        written = 0
        for i in range(n):
            key = self.schema.encode_key(tuple(c[i].item() if hasattr(c[i], "item") else c[i] for c in kcols))
            row_vals, row_nulls = [], []
            for f, a, m in zip(self.schema.columns, vals, masks):
                null = bool(m[i])
                if f.kind == "string":
                    v = None if null else (_batch.check_string(f, a[i]), a[i])[1]
                elif f.kind in ("vector", "vector64"):
                    v = tuple(float(x) for x in a[i]) if not null else None
                elif f.kind == "list":
                    v = tuple(float(x) for x in a[i] if x == x) if not null else None
                else:
                    v = None if null else a[i].item()
                row_vals.append(v)
                row_nulls.append(null)
            e, c = int(ets[i]), int(cts[i])
            if self._expired(e, now):
                self.stale_on_arrival += 1
                continue
            old = self.rows.get(key)
            if old is not None:
                if (e, c) < (old[0], old[1]):
                    continue
            else:
                if len(self.rows) >= self.capacity:
                    if self.capacity < self.max_capacity:
                        self.grow(next_capacity(self.capacity, self.max_capacity))
                    else:
                        self._make_room(now)
            if old is None and self.insert_hidden:
                self.hidden.add(key)
            self.rows[key] = (e, c, tuple(row_vals), tuple(row_nulls))
            written += 1
        return written

    def _make_room(self, now: int) -> None:
        if self.expire(now):
            return
        self.evict_oldest(max(1, self.capacity // 64))

    def evict_oldest(self, k: int) -> list:
        """Removes the k keys with the oldest event time (ties: by encoded
        key); returns their encoded keys (the compiled table: row ids)."""
        oldest = sorted(self.rows, key=lambda kb: (self.rows[kb][0], kb))[:max(k, 0)]
        for kb in oldest:
            del self.rows[kb]
            self.hidden.discard(kb)
        self.evicted_capacity += len(oldest)
        return oldest

    def expire(self, now: int) -> int:
        if self.ttl_us <= 0:
            return 0
        dead = [k for k, r in self.rows.items() if self._expired(r[0], now)]
        for k in dead:
            del self.rows[k]
            self.hidden.discard(k)
        self.evicted_expired += len(dead)
        return len(dead)

    def get_batch(self, keys, now: int) -> BatchResult:
        kcols, n = _batch.key_columns(self.schema, keys)
        status = np.zeros(n, dtype=np.uint8)
        ets = np.zeros(n, dtype=np.int64)
        cts = np.zeros(n, dtype=np.int64)
        values, nulls = _batch.output_arrays(self.schema, n)
        for i in range(n):
            key = self.schema.encode_key(tuple(c[i].item() if hasattr(c[i], "item") else c[i] for c in kcols))
            row = self.rows.get(key)
            if row is None or key in self.hidden:
                continue
            ets[i], cts[i] = row[0], row[1]
            if self._expired(row[0], now):
                status[i] = OUTSIDE_MAX_AGE
                continue
            status[i] = PRESENT
            for f, v, null in zip(self.schema.columns, row[2], row[3]):
                nulls[f.name][i] = null
                if null:
                    continue
                if f.kind == "list":  # the unused tail reads back as NaN
                    values[f.name][i] = np.nan
                    values[f.name][i][:len(v)] = v
                else:
                    values[f.name][i] = v
        return BatchResult(status, ets, cts, values, nulls)

    def get(self, key, now: int):
        kb = self.schema.encode_key(key)
        row = self.rows.get(kb)
        if row is None or kb in self.hidden or self._expired(row[0], now):
            return None
        return tuple(None if null else v for v, null in zip(row[2], row[3]))

    def delete(self, key) -> bool:
        kb = self.schema.encode_key(key)
        self.hidden.discard(kb)
        return self.rows.pop(kb, None) is not None

    def delete_batch(self, keys) -> int:
        kcols, n = _batch.key_columns(self.schema, keys)
        gone = 0
        for i in range(n):
            key = self.schema.encode_key(tuple(c[i].item() if hasattr(c[i], "item") else c[i] for c in kcols))
            self.hidden.discard(key)
            gone += self.rows.pop(key, None) is not None
        return gone

    def _encoded(self, keys) -> list[bytes]:
        kcols, n = _batch.key_columns(self.schema, keys)
        return [self.schema.encode_key(tuple(c[i].item() if hasattr(c[i], "item") else c[i] for c in kcols))
                for i in range(n)]

    def hide(self, keys) -> int:
        """Readers answer NOT_FOUND for these held keys until `show`
        (Table.hide_rows, by key); returns how many changed."""
        new = {k for k in self._encoded(keys) if k in self.rows and k not in self.hidden}
        self.hidden |= new
        return len(new)

    def show(self, keys) -> int:
        gone = {k for k in self._encoded(keys) if k in self.hidden}
        self.hidden -= gone
        return len(gone)

    def keys(self) -> list:
        return [self.schema.decode_key(k) for k in self.rows]

    def stats(self) -> dict:
        return {"rows": len(self.rows), "capacity": self.capacity, "evicted_capacity": self.evicted_capacity,
                "evicted_expired": self.evicted_expired, "stale_on_arrival": self.stale_on_arrival}
