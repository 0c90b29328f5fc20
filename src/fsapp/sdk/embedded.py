"""`FeatureStore`: the engine in-process over a repo (notebooks, tests, jobs).

    store = FeatureStore("my_repo")
    store.apply()
    store.push("transactions", rows)
    store.get_online_features(features=["user_txn:txn_count_1h"], entity_rows=[{"user_id": 1}]).to_dict()

It opens the same engine state `fstore serve` uses (`<data_dir>/engine`), so
a repo filled here can be served later, and the other way round, but never
both at once: the engine is the single writer, and opening it while a server
runs on the repo is refused.
"""
from __future__ import annotations

import os

from fsapp.registry.errors import NotFoundError, RepoError
from fsapp.registry.repo import Repo
from fsapp.sdk.convert import check_feature_args, entity_columns, entity_table, service_refs, to_us
from fsapp.sdk.listing import RegistryListing
from fsapp.sdk.results import OnlineResponse
from fsapp.registry.model import KIND_ORDER

KINDS = KIND_ORDER  # every registry kind (the HTTP registry endpoint is per kind)
START_OF_TIME = -(1 << 62)


def _split_version(name: str) -> tuple[str, int | None]:
    base, _, ver = name.partition("@v")
    return base, int(ver) if ver.isdigit() else None


class FeatureStore(RegistryListing):
    """The engine of the repo at `repo_path`, in this process.

    fsync: WAL policy ("always": a push returns once durable; "interval" /
    "never" trade that for speed). capacity: online rows each feature view
    starts with (tables grow as keys arrive); max_keys: the most keys each
    view keeps online (None: no bound; at the bound the oldest keys are
    evicted, counted in metrics); max_memory: a bound in bytes (or "2GB")
    on the live online state of all views together, kept by evicting the
    keys with the oldest event time from the biggest view. The engine opens on first use (after
    `apply()` on a new repo)."""

    def __init__(self, repo_path: str | os.PathLike = ".", *, fsync: str = "always", capacity: int | None = None,
                 max_keys: int | None = None, max_memory: int | str | None = None, clock=None):
        from fsapp.sizes import parse_size

        self.repo = Repo(repo_path)
        self.fsync, self.capacity, self.max_keys, self.clock = fsync, capacity, max_keys, clock
        self.max_memory = None if max_memory is None else parse_size(max_memory, "max_memory")
        self._engine = None
        self._backend = None

    # ---- lifecycle

    @property
    def engine(self):
        """The in-process `fsapp.engine.Engine` (opened on first use)."""
        if self._engine is None:
            if not self.repo.registry_path.exists():
                raise RepoError(f"{self.repo.root} has no registry yet; call store.apply() (or run "
                                f"`fstore apply --repo {self.repo.root}`) first")
            from fsapp.api.backend import EngineBackend
            from fsapp.engine import Engine
            from fsapp.repo_lock import RepoBusy, RepoLock

            try:  # one writer per repo: a server, or another store, refuses us in one line
                self._lock = RepoLock(self.repo.data_dir, "embedded").acquire()
            except RepoBusy as e:
                raise RepoBusy(f"{self.repo.root}: {e}") from None

            kw = {"clock": self.clock} if self.clock else {}
            if self.capacity is not None:
                kw["capacity"] = self.capacity
            try:
                self._engine = Engine(str(self.repo.data_dir / "engine"), str(self.repo.registry_path),
                                      fsync=self.fsync, max_keys=self.max_keys, max_memory=self.max_memory,
                                      repo_root=str(self.repo.root), **kw)
            except BaseException:
                self._lock.release()
                raise
            self._backend = EngineBackend(self._engine)
        return self._engine

    def close(self) -> None:
        """Flushes the offline log, closes the WAL and the tables."""
        if self._engine is not None:
            self._engine.close()
            self._engine = self._backend = None
            self._lock.release()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ---- definitions

    def plan(self):
        """What `apply()` would change (a `fsapp.registry.Plan`; `.render()`)."""
        return self.repo.plan()

    def apply(self, allow_incompatible: bool = False):
        """Registers the repo's definitions (atomically) and starts the engine's
        runtimes for new ones. Returns the plan that was applied."""
        plan, apply_id = self.repo.apply(allow_incompatible=allow_incompatible)
        if apply_id is not None and self._engine is not None:
            self._engine.reload()
        return plan

    # ---- writes

    def push(self, stream: str, rows, *, idempotency_key: str | None = None) -> dict:
        """Appends events (list of dicts, dict of lists, pandas DataFrame or
        Arrow table) to `stream`; returns `{"accepted", "late", "lsn"}` once
        they are durable under the fsync policy. A push refused (an error)
        changed nothing. `idempotency_key`: a retry with the same key returns
        the first answer and applies nothing."""
        return self.engine.push(stream, rows, idempotency_key=idempotency_key).to_dict()

    def materialize(self, start, end, views: list[str] | None = None) -> dict:
        """Recomputes online values as of `end` from the offline log for keys
        with events in [start, end) (heals late events, backfills new views).
        `start` None: from the beginning. Returns `{"views": {name: rows},
        "skipped": {name: why}, ...}`. For a view the engine computes from a
        stream, the window state of those keys is rebuilt from every logged
        event (late ones included), so the healed values last."""
        self.engine
        s = START_OF_TIME if start is None else to_us(start, "start")
        return self._backend.materialize(s, to_us(end, "end"), list(views) if views is not None else None)

    # ---- reads

    def get_online_features(self, features: list[str] | None = None, entity_rows=None, *,
                            feature_service: str | None = None, full_feature_names: bool = False,
                            as_of=None) -> OnlineResponse:
        """Latest values for each entity row. `features`: "view:feature"
        refs (or "view:*"), or `feature_service=`. `entity_rows`: list of
        dicts or dict of lists. `as_of`: read the value served at that time."""
        check_feature_args(features, feature_service)
        eng = self.engine
        entities = entity_columns(entity_rows)
        if as_of is None:
            eng.tick()  # window values move at hop boundaries, as in the server's ticker
        raw = eng.get_online_features(features, feature_service, entities,
                                      as_of=None if as_of is None else to_us(as_of, "as_of"),
                                      full_feature_names=full_feature_names)
        return OnlineResponse(raw, len(entities))

    def get_historical_features(self, entity_df, features: list[str] | None = None, *,
                                feature_service: str | None = None, full_feature_names: bool = False):
        """Point-in-time-correct training set: for each row of `entity_df`
        (keys + `event_timestamp`; pandas, Arrow, dict of lists or list of
        dicts), each feature's value as of that time. `.to_df()` / `.to_arrow()`
        / `.to_parquet(path)`."""
        check_feature_args(features, feature_service)
        from fsapp.sdk.provenance import training_provenance

        eng = self.engine
        if feature_service is not None:
            features = self._service_features(feature_service)
        source = entity_df
        if not isinstance(entity_df, (str, os.PathLike)):
            entity_df = entity_table(entity_df)
        result = eng.get_historical_features(entity_df, list(features), full_feature_names=full_feature_names)
        # what the set is made of, for fsapp.integrations (MLflow, KFP) to log beside a model
        result.provenance = training_provenance(list(features), feature_service, full_feature_names, source,
                                                lambda name: eng.registry.get(*_split_version(name)).to_dict())
        return result

    def _service_features(self, name: str) -> list[str]:
        entry = self.engine.registry.get(name)
        if entry.kind != "feature_service":
            raise NotFoundError(f"{name} is a {entry.kind}, not a feature service")
        return service_refs(entry.resolved["features"], lambda view: self.engine.registry.get(view).version)

    # ---- registry

    def _list(self, kind: str) -> list[dict]:
        from fsapp.registry.catalog import Registry

        if self._engine is None and not self.repo.registry_path.exists():
            return []
        if self._engine is not None:
            entries = self._engine.registry.list(kind)
        else:  # reading the registry needs no engine (and works while a server runs)
            with Registry(self.repo.registry_path) as reg:
                entries = reg.list(kind)
        return [e.to_dict() for e in sorted(entries, key=lambda e: e.name)]

    def describe(self, name: str) -> dict:
        """One registered definition (`name` or `name@vN`) as a dict: kind,
        version, definition, resolved keys and types."""
        from fsapp.registry.catalog import Registry

        base, _, ver = name.partition("@v")
        with Registry(self.repo.registry_path) as reg:
            return reg.get(base, int(ver) if ver.isdigit() else None).to_dict()

    def lineage(self, name: str) -> dict:
        """What `name` (view, view:feature, stream, service...) is made of and
        what uses it: `{"root", "nodes", "edges"}`."""
        from fsapp.registry.catalog import Registry

        with Registry(self.repo.registry_path) as reg:
            return reg.lineage(name)

    def health(self) -> dict:
        self.engine
        return self._backend.health()
