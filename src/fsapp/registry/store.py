"""Registry storage: one SQLite file in WAL mode (stdlib sqlite3).

Why SQLite: gunicorn workers and `fstore` commands are separate processes.
WAL mode lets any number of readers see a consistent snapshot while one
`apply` writes, and a transaction makes an apply all-or-nothing even if the
process is killed half way. Nothing is ever updated in place except the small
`live` table (name → current version); every version of every definition stays
in `versions`, and `changes` records what each apply did.

Tables
  applies  (id, applied_at, who, repo, summary)            one row per apply
  versions (name, version, kind, spec JSON, apply_id)      every version ever
  live     (name, kind, version)                           what is current
  changes  (apply_id, name, kind, action, old_version, new_version, incompatible)
"""
from __future__ import annotations

import functools

import getpass
import json
import os
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from fsapp.registry.errors import NotFoundError, RegistryConflict
from fsapp.registry.model import from_dict

SCHEMA_VERSION = "1"
_DDL = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS applies (id INTEGER PRIMARY KEY, applied_at TEXT NOT NULL, who TEXT NOT NULL,
                                    repo TEXT NOT NULL, summary TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS versions (name TEXT NOT NULL, version INTEGER NOT NULL, kind TEXT NOT NULL,
                                     spec TEXT NOT NULL, apply_id INTEGER NOT NULL,
                                     PRIMARY KEY (name, version));
CREATE TABLE IF NOT EXISTS live (name TEXT PRIMARY KEY, kind TEXT NOT NULL, version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS changes (apply_id INTEGER NOT NULL, name TEXT NOT NULL, kind TEXT NOT NULL,
                                    action TEXT NOT NULL, old_version INTEGER, new_version INTEGER,
                                    incompatible TEXT NOT NULL DEFAULT '[]');
"""


def canonical_json(spec: dict) -> str:
    """Stable text of a spec: equal specs give equal text (versions compare it)."""
    return json.dumps(spec, sort_keys=True, separators=(",", ":"))


@dataclass(frozen=True)
class Entry:
    """One stored version of one definition."""

    kind: str
    name: str
    version: int
    spec: dict
    apply_id: int = 0
    applied_at: str = ""

    @functools.cached_property
    def definition(self):
        # PERF: parsed once per entry (definitions are frozen); the engine reads
        # a view's definition on every push (benches/bench_push.py)
        return from_dict(self.kind, self.spec["definition"])

    @property
    def resolved(self) -> dict:
        return self.spec["resolved"]

    def to_dict(self) -> dict:
        return {"kind": self.kind, "name": self.name, "version": self.version, "apply_id": self.apply_id,
                "applied_at": self.applied_at, **self.spec}


@dataclass(frozen=True)
class Snapshot:
    """The live definitions as of one apply (`apply_id` 0: empty registry)."""

    apply_id: int
    entries: dict[str, Entry] = field(default_factory=dict)

    def get(self, name: str) -> Entry | None:
        return self.entries.get(name)

    def of_kind(self, kind: str) -> list[Entry]:
        return [e for e in self.entries.values() if e.kind == kind]


class RegistryStore:
    """Open with `create=True` to make the file (apply does); readers open an
    existing file and never write."""

    def __init__(self, path: str | os.PathLike, create: bool = False, timeout: float = 30.0):
        self.path = Path(path)
        if not self.path.exists():
            if not create:
                raise NotFoundError(f"no registry at {self.path}: run `fstore apply` in the repo first")
            self.path.parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: we issue BEGIN/COMMIT ourselves, so a snapshot
        # read spans exactly the statements we choose.
        self.con = sqlite3.connect(str(self.path), timeout=timeout, isolation_level=None,
                                   check_same_thread=False)
        # one transaction at a time on the shared connection: the engine's socket
        # threads, a gRPC server's thread pool and the ticker all read through it,
        # and a second BEGIN on it while one is open fails ("cannot start a
        # transaction within a transaction": a 500 on a concurrent as_of read)
        self._lock = threading.RLock()
        self.con.execute(f"PRAGMA busy_timeout = {int(timeout * 1000)}")
        if create:
            self._init_schema()
        self._check_schema()

    def _init_schema(self) -> None:
        # journal_mode=WAL is persistent in the file; readers inherit it.
        self.con.execute("PRAGMA journal_mode = WAL")
        self.con.execute("BEGIN IMMEDIATE")
        try:
            for statement in _DDL.split(";"):
                if statement.strip():
                    self.con.execute(statement)
            self.con.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (SCHEMA_VERSION,))
            self.con.execute("COMMIT")
        except BaseException:
            self.con.execute("ROLLBACK")
            raise

    def _check_schema(self) -> None:
        try:
            row = self.con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        except sqlite3.DatabaseError as e:
            raise NotFoundError(f"{self.path} is not an fstore registry ({e})") from None
        if row is None or row[0] != SCHEMA_VERSION:
            raise NotFoundError(f"{self.path}: registry schema version {row and row[0]!r}, this fstore reads "
                                f"{SCHEMA_VERSION!r}")

    def close(self) -> None:
        self.con.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ---- reads ----
    def _read(self, fn):
        """Run fn(con) inside one read transaction: a consistent snapshot even
        while another process applies."""
        with self._lock:
            self.con.execute("BEGIN")
            try:
                return fn(self.con)
            finally:
                self.con.execute("COMMIT")

    def head(self) -> int:
        return self._read(lambda c: c.execute("SELECT coalesce(max(id), 0) FROM applies").fetchone()[0])

    def snapshot(self) -> Snapshot:
        def read(c):
            head = c.execute("SELECT coalesce(max(id), 0) FROM applies").fetchone()[0]
            rows = c.execute("SELECT v.kind, v.name, v.version, v.spec, v.apply_id, a.applied_at FROM live l "
                             "JOIN versions v ON v.name = l.name AND v.version = l.version "
                             "JOIN applies a ON a.id = v.apply_id ORDER BY v.name").fetchall()
            return Snapshot(head, {r[1]: _entry(r) for r in rows})
        return self._read(read)

    def get(self, name: str, version: int | None = None) -> Entry:
        """The live version (version=None) or any stored version, even of a
        definition removed since."""
        def read(c):
            if version is None:
                row = c.execute("SELECT v.kind, v.name, v.version, v.spec, v.apply_id, a.applied_at FROM live l "
                                "JOIN versions v ON v.name = l.name AND v.version = l.version "
                                "JOIN applies a ON a.id = v.apply_id WHERE l.name = ?", (name,)).fetchone()
            else:
                row = c.execute("SELECT v.kind, v.name, v.version, v.spec, v.apply_id, a.applied_at FROM versions v "
                                "JOIN applies a ON a.id = v.apply_id WHERE v.name = ? AND v.version = ?",
                                (name, version)).fetchone()
            return row
        # a version past SQLite's 64-bit integers (view@v99999999999999999999999:f) is no
        # version: the query raised OverflowError (HTTP 500)
        row = self._read(read) if version is None or 0 <= version < 1 << 63 else None
        if row is None:
            latest = self.max_versions().get(name)
            if latest is None:
                raise NotFoundError(f"the registry has no definition named {name!r}")
            if version is None:
                raise NotFoundError(f"{name} was removed (its last version was v{latest}; read it as {name}@v{latest})")
            raise NotFoundError(f"{name} has no version {version} (versions 1..{latest})")
        return _entry(row)

    def history(self, name: str) -> list[Entry]:
        rows = self._read(lambda c: c.execute(
            "SELECT v.kind, v.name, v.version, v.spec, v.apply_id, a.applied_at FROM versions v "
            "JOIN applies a ON a.id = v.apply_id WHERE v.name = ? ORDER BY v.version", (name,)).fetchall())
        if not rows:
            raise NotFoundError(f"the registry has no definition named {name!r}")
        return [_entry(r) for r in rows]

    def max_versions(self) -> dict[str, int]:
        return dict(self._read(lambda c: c.execute(
            "SELECT name, max(version) FROM versions GROUP BY name").fetchall()))

    def applies(self) -> list[dict]:
        rows = self._read(lambda c: c.execute(
            "SELECT id, applied_at, who, repo, summary FROM applies ORDER BY id").fetchall())
        return [dict(zip(("id", "applied_at", "who", "repo", "summary"), r)) for r in rows]

    def changes(self, apply_id: int) -> list[dict]:
        rows = self._read(lambda c: c.execute(
            "SELECT name, kind, action, old_version, new_version, incompatible FROM changes WHERE apply_id = ?",
            (apply_id,)).fetchall())
        return [{"name": r[0], "kind": r[1], "action": r[2], "old_version": r[3], "new_version": r[4],
                 "incompatible": json.loads(r[5])} for r in rows]

    # ---- the one write ----
    def apply(self, plan, repo: str = "", who: str | None = None) -> int:
        """Write `plan` (fsapp.registry.plan.Plan) in one transaction and return
        the new apply id. Refuses if another apply happened since the plan was
        made, so a plan is never applied to a registry it was not computed
        against."""
        with self._lock:
            return self._apply(plan, repo, who)

    def _apply(self, plan, repo: str, who: str | None) -> int:
        who = who or _user()
        self.con.execute("BEGIN IMMEDIATE")  # takes the write lock now: two applies serialise here
        try:
            head = self.con.execute("SELECT coalesce(max(id), 0) FROM applies").fetchone()[0]
            if head != plan.base_apply_id:
                raise RegistryConflict(f"the registry changed since this plan was made (apply #{head}, plan was "
                                       f"against #{plan.base_apply_id}); run plan/apply again")
            now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            cur = self.con.execute("INSERT INTO applies (applied_at, who, repo, summary) VALUES (?, ?, ?, ?)",
                                   (now, who, str(repo), plan.summary()))
            apply_id = cur.lastrowid
            for ch in plan.changes:
                if ch.action in ("add", "change"):
                    self.con.execute("INSERT INTO versions VALUES (?, ?, ?, ?, ?)",
                                     (ch.name, ch.new_version, ch.kind, canonical_json(ch.new_spec), apply_id))
                    self.con.execute("INSERT OR REPLACE INTO live VALUES (?, ?, ?)",
                                     (ch.name, ch.kind, ch.new_version))
                elif ch.action == "remove":
                    self.con.execute("DELETE FROM live WHERE name = ?", (ch.name,))
                else:
                    continue
                self.con.execute("INSERT INTO changes VALUES (?, ?, ?, ?, ?, ?, ?)",
                                 (apply_id, ch.name, ch.kind, ch.action, ch.old_version, ch.new_version,
                                  json.dumps(ch.incompatible)))
            self.con.execute("COMMIT")
            return apply_id
        except BaseException:
            self.con.execute("ROLLBACK")
            raise


def _entry(row) -> Entry:
    kind, name, version, spec, apply_id, applied_at = row
    return Entry(kind, name, version, json.loads(spec), apply_id, applied_at)


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid {os.getuid()}"
