"""HTTP metrics summed over every gunicorn worker.

Each worker keeps its own registry (no cross-process locking on the request
path) and, at most once a second, writes a snapshot to
`<dir>/worker-<pid>.json` (temp file + rename) in `upkeep()`, which the WSGI
entry (fsapp.serve.wsgi) calls once a response has been sent: writing it
costs ~1 ms, and inside a request it would land on ~1% of requests, the
p99. `/metrics` on any worker writes its own snapshot, then merges the
snapshots of the workers still alive, so a scrape sees the whole server
whichever worker answers it."""
from __future__ import annotations

import glob
import json
import os
import time

from fscore.proc import pid_alive

from fsapp.api.metrics import HttpMetrics, merge_snapshots

DUMP_EVERY_S = 1.0


class SharedHttpMetrics(HttpMetrics):
    def __init__(self, directory: str):
        super().__init__()
        self.directory = directory
        os.makedirs(directory, exist_ok=True)
        self._last_dump = 0.0

    def _path(self, pid: int) -> str:
        return os.path.join(self.directory, f"worker-{pid}.json")

    def dump(self) -> None:
        pid = os.getpid()
        tmp = self._path(pid) + ".tmp"
        with open(tmp, "w") as f:
            json.dump(self.registry.snapshot(), f)
        os.replace(tmp, self._path(pid))
        self._last_dump = time.monotonic()

    def upkeep(self) -> None:
        """Write the snapshot if the last one is older than DUMP_EVERY_S."""
        if time.monotonic() - self._last_dump >= DUMP_EVERY_S:
            self.dump()

    def render(self) -> str:
        self.dump()
        snapshots = []
        for path in glob.glob(os.path.join(self.directory, "worker-*.json")):
            try:
                pid = int(os.path.basename(path)[len("worker-"):-len(".json")])
            except ValueError:
                continue
            if not pid_alive(pid):
                continue
            try:
                with open(path) as f:
                    snapshots.append(json.load(f))
            except (OSError, ValueError):
                continue  # a worker mid-write: its next dump will count
        return merge_snapshots(snapshots).render()
