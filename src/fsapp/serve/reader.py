"""Online reads in a gunicorn worker: the engine's table files mapped
read-only (no copy per worker), feature references resolved through the
registry with a short cache. A table whose file was replaced (a restarted
engine) is reopened."""
from __future__ import annotations

import os
import threading
import time

from fscore.table import Table

from fsapp.engine.online import OnlinePlan, online_json, online_response
from fsapp.engine.runtime import table_file
from fsapp.registry.catalog import Registry
from fsapp.registry.errors import NotFoundError

RESOLVE_CACHE_S = 1.0  # a registry apply becomes visible to reads within this
STALE_CHECK_S = 0.5


class OnlineReader:
    def __init__(self, data_dir: str, registry_path: str):
        self.data_dir = data_dir
        self.registry = Registry(registry_path)
        self.registry_path = str(registry_path)
        self._tables: dict[tuple[str, int], tuple[Table, float]] = {}
        self._resolved: dict = {}
        self._lock = threading.Lock()

    def _table(self, info) -> Table:
        key = (info.name, info.version)
        now = time.monotonic()
        hit = self._tables.get(key)
        if hit is not None:
            table, checked = hit
            # a grown table is marked retired at once (one atomic load); a
            # replaced file (a restarted engine) is checked by path now and then
            if now - checked < STALE_CHECK_S and not table.retired():
                return table
            if not table.reader_is_stale():
                self._tables[key] = (table, now)
                return table
        path = table_file(self.data_dir, info.name, info.version)
        if not os.path.exists(path):
            raise NotFoundError(f"feature view {info.name} v{info.version} is not served online yet "
                                "(the engine has not started it: apply, then wait for the engine to reload)")
        table = Table.open_reader(path)
        with self._lock:
            self._tables[key] = (table, now)
        return table

    def _registry_signature(self) -> tuple:
        """Changes whenever an apply commits (SQLite WAL mode writes the -wal
        file; a checkpoint rewrites the main file): a stat, not a query."""
        sig = []
        for suffix in ("", "-wal"):
            try:
                st = os.stat(self.registry_path + suffix)
                sig.append((st.st_mtime_ns, st.st_size, st.st_ino))
            except FileNotFoundError:
                sig.append(None)
        return tuple(sig)

    def resolve(self, features, feature_service) -> OnlinePlan:
        # PERF: resolving costs a few SQLite queries (~2 ms); reuse it until the
        # registry file changes (benches/bench_serving.py p99)
        key = (tuple(features or ()), feature_service)
        now = time.monotonic()
        hit = self._resolved.get(key)
        if hit is not None and now - hit[1] < RESOLVE_CACHE_S:
            return hit[0]
        sig = self._registry_signature()
        if hit is not None and hit[2] == sig:
            self._resolved[key] = (hit[0], now, sig)
            return hit[0]
        resolved = OnlinePlan(self.registry.resolve_features(features, feature_service))
        self._resolved[key] = (resolved, now, sig)
        return resolved

    def get_online_features(self, features=None, feature_service=None, entities=None, *, now: int,
                            full_feature_names: bool = False) -> dict:
        return online_response(self.resolve(features, feature_service), self._table, entities, now,
                               full_feature_names)

    def get_online_json(self, features=None, feature_service=None, entities=None, *, now: int,
                        full_feature_names: bool = False) -> bytes:
        """`get_online_features` as its JSON text (what the API sends)."""
        return online_json(self.resolve(features, feature_service), self._table, entities, now, full_feature_names)

    def close(self) -> None:
        for t, _ in self._tables.values():
            t.close()
        self.registry.close()
