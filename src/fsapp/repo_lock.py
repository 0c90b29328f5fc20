"""One writer per repo: a lock on the repo's data directory, held for the
life of whoever writes its store (`fstore serve`, or an embedded
`FeatureStore`), with who holds it written beside it.

    <data_dir>/owner.lock    flock(LOCK_EX) held by the writer's process
    <data_dir>/owner.json    {"kind": "serve"|"embedded", "pid", "host", "port", "since"}

A second writer refuses in one line naming the first (pid, and the URL of a
server). The lock goes with the process that holds it (kill -9 included):
nothing stale to clean up. The fd is close-on-exec, so the engine and the
workers a server starts do not hold it.
"""
from __future__ import annotations

import fcntl
import json
import os
import time

from fsapp.registry.errors import RepoError


class RepoBusy(RepoError):
    """The repo's store is already open for writing by another process."""


class RepoLock:
    def __init__(self, data_dir, kind: str, *, host: str | None = None, port: int | None = None):
        self.data_dir = str(data_dir)
        self.kind, self.host, self.port = kind, host, port
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> "RepoLock":
        try:
            os.makedirs(self.data_dir, exist_ok=True)
            fd = os.open(os.path.join(self.data_dir, "owner.lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as e:
            raise RepoError(f"the data directory {self.data_dir} cannot be used: {e.strerror}; make it writable, "
                            "or set data_dir in fstore.yaml to a directory that is") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RepoBusy(busy_message(self.data_dir)) from None
        self._fd = fd
        info = {"kind": self.kind, "pid": os.getpid(), "host": self.host, "port": self.port,
                "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        tmp = os.path.join(self.data_dir, f"owner.json.tmp.{os.getpid()}")
        with open(tmp, "w") as f:
            json.dump(info, f)
        os.replace(tmp, os.path.join(self.data_dir, "owner.json"))
        return self

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


def owner(data_dir) -> dict | None:
    """Who holds the repo's lock now (None when nobody does)."""
    path = os.path.join(str(data_dir), "owner.lock")
    if not os.path.exists(path):
        return None
    fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    except BlockingIOError:
        try:
            with open(os.path.join(str(data_dir), "owner.json")) as f:
                return json.load(f)
        except (OSError, ValueError):
            return {}
    finally:
        os.close(fd)


def busy_message(data_dir) -> str:
    who = owner(data_dir) or {}
    if who.get("kind") == "serve":
        url = f"http://{who.get('host') or '127.0.0.1'}:{who.get('port')}"
        return (f"`fstore serve` (pid {who.get('pid')}, {url}) is running on this repo and is its only writer: "
                f"use fsapp.Client({url!r}) to talk to it (from the command line: --url {url}), or stop it first")
    if who.get("kind") == "embedded":
        return (f"an embedded FeatureStore (pid {who.get('pid')}) has this repo's store open: close it "
                "(store.close()) or end that process first")
    return f"another process has this repo's store open ({data_dir}/owner.lock is locked)"
