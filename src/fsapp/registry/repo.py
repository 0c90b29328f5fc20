"""A feature repository: a directory with `fstore.yaml` and definition files
(`*.sql` in the DSL, `*.py` with the Python API), found recursively except
under the data directory, hidden directories and files starting with '_'.

`Repo(path).plan()` diffs it against the registry; `.apply()` writes it
atomically (everything or nothing)."""
from __future__ import annotations

import runpy
from pathlib import Path

from fsapp.registry import python_api
from fsapp.registry.dsl import parse_with_lines
from fsapp.registry.errors import DefinitionError, IncompatibleChange, RepoError
from fsapp.registry.model import Definition
from fsapp.registry.plan import Plan, make_plan
from fsapp.registry.resolve import Resolved, resolve
from fsapp.registry.store import RegistryStore, Snapshot
from fsapp.registry.yaml_lite import load as load_yaml

CONFIG_NAME = "fstore.yaml"
DEFAULTS = {"registry": "data/registry.db", "data_dir": "data"}


class Repo:
    def __init__(self, path: str | Path = "."):
        self.root = Path(path).resolve()
        cfg_path = self.root / CONFIG_NAME
        if not cfg_path.is_file():
            raise RepoError(f"{self.root} is not an fstore repo (no {CONFIG_NAME}); create one with `fstore init DIR`")
        cfg = load_yaml(cfg_path.read_text(encoding="utf-8"), str(cfg_path))
        self.config = {**DEFAULTS, **cfg}
        if not isinstance(self.config.get("project"), str) or not self.config["project"]:
            raise RepoError(f"{cfg_path}: set 'project: <name>'")

    @property
    def project(self) -> str:
        return self.config["project"]

    @property
    def registry_path(self) -> Path:
        return self.root / str(self.config["registry"])

    @property
    def data_dir(self) -> Path:
        return self.root / str(self.config["data_dir"])

    def definition_files(self) -> list[Path]:
        skip = self.data_dir.resolve()
        out = []
        for p in sorted(self.root.rglob("*")):
            rel = p.relative_to(self.root).parts
            if (p.suffix not in (".sql", ".py") or not p.is_file() or any(part.startswith((".", "_")) for part in rel)
                    or skip in p.resolve().parents):
                continue
            out.append(p)
        return out

    def load_definitions(self) -> tuple[list[Definition], dict[str, str]]:
        """(definitions, {name: "file:line"}). Syntax errors raise at once;
        duplicate names are left for resolve() to report with both places."""
        defs, origins = [], {}
        for path in self.definition_files():
            rel = str(path.relative_to(self.root))
            if path.suffix == ".sql":
                for obj, line in parse_with_lines(path.read_text(encoding="utf-8"), rel):
                    defs.append(obj)
                    origins.setdefault(obj.name, f"{rel}:{line}")
            else:
                for obj in _python_definitions(path, rel):
                    defs.append(obj)
                    origins.setdefault(obj.name, rel)
        if not defs:
            raise RepoError(f"{self.root}: no definitions found (*.sql or *.py files)")
        return defs, origins

    def resolve(self) -> dict[str, Resolved]:
        defs, origins = self.load_definitions()
        return resolve(defs, origins)

    def open_registry(self, create: bool = False) -> RegistryStore:
        return RegistryStore(self.registry_path, create=create)

    def plan(self, store: RegistryStore | None = None) -> Plan:
        resolved = self.resolve()
        if store is None and not self.registry_path.exists():
            return make_plan(resolved, Snapshot(0), {}, lambda name, version: None)
        own = store is None
        store = store or self.open_registry()
        try:
            return plan_against(resolved, store)
        finally:
            if own:
                store.close()

    def apply(self, allow_incompatible: bool = False) -> tuple[Plan, int | None]:
        """Plan and apply in one go; (plan, apply id or None when nothing changed)."""
        resolved = self.resolve()  # before creating anything: a bad repo leaves no file behind
        with self.open_registry(create=True) as store:
            plan = plan_against(resolved, store)
            if not plan.pending:
                return plan, None
            if plan.incompatible and not allow_incompatible:
                raise IncompatibleChange(
                    "incompatible changes (readers of the old versions break):\n"
                    + "\n".join(f"  {c.name}: {'; '.join(c.incompatible)}" for c in plan.incompatible)
                    + "\nre-run with --allow-incompatible to apply them (old versions stay readable)")
            return plan, store.apply(plan, repo=str(self.root))


def plan_against(resolved: dict[str, Resolved], store: RegistryStore) -> Plan:
    def lookup(name, version):
        try:
            return store.get(name, version)
        except LookupError:
            return None
    # Snapshot and max versions must describe the same apply: re-read if an
    # apply slipped in between (apply re-checks the head anyway).
    while True:
        snap = store.snapshot()
        max_versions = store.max_versions()
        if store.head() == snap.apply_id:
            return make_plan(resolved, snap, max_versions, lookup)


def _python_definitions(path: Path, rel: str) -> list[Definition]:
    try:
        namespace = runpy.run_path(str(path), run_name=f"fstore_repo.{path.stem}")
    except DefinitionError as e:
        raise DefinitionError([f"{rel}: {p}" for p in e.problems]) from None
    except Exception as e:  # a user's file: report any failure with its place
        raise RepoError(f"{rel}: failed to run: {type(e).__name__}: {e}") from e
    out = []
    for value in namespace.values():
        if isinstance(value, (python_api._Def, Definition)):
            obj = python_api.to_model(value)
            if obj not in out:
                out.append(obj)
    return out
