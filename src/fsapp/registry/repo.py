"""A feature repository: a directory with `fstore.yaml` and definition files
(`*.sql` in the DSL, `*.py` with the Python API), found recursively except
under the data directory, hidden directories, files starting with '_' and
what `.fstoreignore` lists (glob patterns, one a line, as Feast's
`.feastignore`).

`Repo(path).plan()` diffs it against the registry; `.apply()` writes it
atomically (everything or nothing).

`fstore.yaml` is full YAML (PyYAML's safe loader: anchors, merge keys, block
strings) with two additions that keep mistakes loud: a key written twice in
one mapping is refused (YAML would keep the last one silently), and every
mapping remembers the line of each of its keys, so whoever checks a section
names the line (`Repo.config_where("online", "port")` -> ".../fstore.yaml
line 4")."""
from __future__ import annotations

import fnmatch
import runpy
import threading
from pathlib import Path, PurePosixPath

import yaml

from fsapp.registry import python_api
from fsapp.registry.dsl import parse_with_lines
from fsapp.registry.errors import DefinitionError, IncompatibleChange, RepoError
from fsapp.registry.model import Definition
from fsapp.registry.plan import Plan, make_plan
from fsapp.registry.resolve import Resolved, resolve
from fsapp.registry.store import RegistryStore, Snapshot

CONFIG_NAME = "fstore.yaml"
DEFAULTS = {"registry": "data/registry.db", "data_dir": "data"}
# Every top-level section fstore reads: a misspelt one ('kafak:') was ignored, and with it the
# whole section (a server that never consumes its topics, and says nothing).
SECTIONS = ("project", "registry", "data_dir", "online", "kafka", "auth", "feature_logging", "mlflow")
_MERGE_TAG = "tag:yaml.org,2002:merge"
IGNORE_NAME = ".fstoreignore"
# the Python definition files being run, per thread: one that reads the repo's definitions
# again (a script that applies the repo when imported) recursed until Python gave up
_running = threading.local()


class ConfigSection(dict):
    """A mapping read from fstore.yaml: a plain dict that also knows the line
    of its first key (`line`) and of each key (`lines`)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.line = 1
        self.lines: dict = {}


class _ConfigLoader(yaml.SafeLoader):
    """yaml.safe_load's loader, building ConfigSections."""


def _construct_section(loader: _ConfigLoader, node: yaml.MappingNode):
    section = ConfigSection()
    section.line = node.start_mark.line + 1
    yield section  # first, so that anchors referring back to it resolve
    own = [key_node for key_node, _ in node.value if key_node.tag != _MERGE_TAG]
    section.update(loader.construct_mapping(node))  # resolves `<<:` merges into node.value
    seen = set()
    for key_node in own:
        key = loader.construct_object(key_node)
        if not isinstance(key, str):
            raise yaml.constructor.ConstructorError(
                None, None, f"the key {key_node.value!r} reads as {type(key).__name__} {key!r}, not as a name: "
                f"quote it ('{key_node.value}')", key_node.start_mark)
        if key in seen:
            raise yaml.constructor.ConstructorError(None, None, f"{key!r} is set twice in this mapping",
                                                    key_node.start_mark)
        seen.add(key)
    for key_node, _ in node.value:  # merged keys first, then own ones: the line of the value kept
        section.lines[loader.construct_object(key_node)] = key_node.start_mark.line + 1


_ConfigLoader.add_constructor("tag:yaml.org,2002:map", _construct_section)


def load_config(text: str, source: str = CONFIG_NAME) -> ConfigSection:
    """The settings in `text` (YAML whose top level is a mapping). Errors are
    RepoError "SOURCE line N: what is wrong"."""
    try:
        data = yaml.load(text, Loader=_ConfigLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"{source} line {mark.line + 1}" if mark is not None else source
        what = "; ".join(str(x) for x in (e.context, e.problem) if x) or type(e).__name__
        if "'\\t'" in what:
            what += " (indent with spaces, not tabs)"
        raise RepoError(f"{where}: {what}") from None
    except yaml.reader.ReaderError as e:  # a control character in the text
        line = text[:e.position].count("\n") + 1
        raise RepoError(f"{source} line {line}: character #x{e.character:04x} is not allowed in YAML text") from None
    if data is None:
        return ConfigSection()
    if not isinstance(data, ConfigSection):
        raise RepoError(f"{source} line 1: expected settings as 'key: value' lines (project: NAME, ...), "
                        f"not a {type(data).__name__}")
    return data


class Repo:
    def __init__(self, path: str | Path = "."):
        self.root = Path(path).resolve()
        cfg_path = self.root / CONFIG_NAME
        if not cfg_path.is_file():
            raise RepoError(f"{self.root} is not an fstore repo (no {CONFIG_NAME}); create one with `fstore init DIR`")
        self.config_path = cfg_path
        try:
            text = cfg_path.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise RepoError(f"{cfg_path}: not UTF-8 text (byte {e.start}); save it as UTF-8") from None
        self._settings = load_config(text, str(cfg_path))
        for key in self._settings:
            if key not in SECTIONS and not key.startswith(("x-", "x_")):  # x-...: the user's own (YAML anchors)
                import difflib
                close = difflib.get_close_matches(key, SECTIONS, n=1)
                hint = f"did you mean '{close[0]}'? " if close else ""
                raise RepoError(f"{self.config_where(key)}: '{key}' is not an fstore.yaml setting; {hint}"
                                f"the settings are {', '.join(SECTIONS)} (a key of your own, e.g. for YAML "
                                "anchors, starts with x-)")
        self.config = {**DEFAULTS, **self._settings}
        if not isinstance(self.config.get("project"), str) or not self.config["project"]:
            raise RepoError(f"{self.config_where('project')}: set 'project: <name>'")

    def config_where(self, *keys: str) -> str:
        """Where a setting is: ".../fstore.yaml line N" for the deepest of
        `keys` (a section, then a key in it, ...) that is written; the file
        alone when none is."""
        section, line = self._settings, None
        for key in keys:
            if not isinstance(section, ConfigSection) or key not in section:
                break
            line = section.lines.get(key, line)
            section = section[key]
        return f"{self.config_path} line {line}" if line else str(self.config_path)

    @property
    def project(self) -> str:
        return self.config["project"]

    @property
    def registry_path(self) -> Path:
        return self.root / str(self.config["registry"])

    @property
    def data_dir(self) -> Path:
        return self.root / str(self.config["data_dir"])

    @property
    def api_keys_file(self) -> Path | None:
        """`auth: api_keys_file: PATH` (relative to the repo), or None. The
        keys themselves are never in fstore.yaml, a file that is committed
        and shared: they live in that keys file (fsapp.api.auth's format)."""
        auth = self.config.get("auth")
        if auth is None:
            return None
        inline = ("API keys are never written in fstore.yaml (it gets committed and shared): put them in a keys "
                  "file, one 'TOKEN SCOPE[,SCOPE]' a line, and name it with auth: api_keys_file: PATH")
        if not isinstance(auth, dict):
            raise RepoError(f"{self.config_where('auth')}: auth: expected 'api_keys_file: PATH'; {inline}")
        for key in auth:
            if key != "api_keys_file":
                raise RepoError(f"{self.config_where('auth', key)}: auth.{key}: the one auth setting is "
                                f"api_keys_file; {inline}")
        path = auth.get("api_keys_file")
        if path is None:
            return None
        if not isinstance(path, str) or not path.strip():
            raise RepoError(f"{self.config_where('auth', 'api_keys_file')}: auth.api_keys_file: expected a file "
                            f"path; {inline}")
        return self.root / path

    def ignore_patterns(self) -> list[str]:
        """`.fstoreignore`'s glob patterns (`#` comments and blank lines
        skipped; a trailing '/' is dropped: a pattern naming a directory
        takes everything below it)."""
        path = self.root / IGNORE_NAME
        if not path.is_file():
            return []
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise RepoError(f"{path}: cannot be read: {e}") from None
        return [p.strip().rstrip("/") for p in lines if p.strip() and not p.strip().startswith("#")]

    def definition_files(self) -> list[Path]:
        skip = self.data_dir.resolve()
        ignore = self.ignore_patterns()
        out = []
        for p in sorted(self.root.rglob("*")):
            rel = p.relative_to(self.root).parts
            if (p.suffix not in (".sql", ".py") or not p.is_file() or any(part.startswith((".", "_")) for part in rel)
                    or skip in p.resolve().parents or ignore and _ignored(rel, ignore)):
                continue
            out.append(p)
        return out

    def load_definitions(self) -> tuple[list[Definition], dict[str, str]]:
        """(definitions, {name: "file:line"}). Syntax errors raise at once;
        duplicate names are left for resolve() to report with both places."""
        for running in getattr(_running, "files", ()):
            if self.root.resolve() in running.resolve().parents:
                rel = running.resolve().relative_to(self.root.resolve())
                raise _Reentered(f"{rel}: reading it as a definitions file read this repo's definitions again (it "
                                 "plans or applies the repo when run): put that code under `if __name__ == "
                                 f"\"__main__\":`, move the script out of the repo, or list it in {IGNORE_NAME}")
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
        resolved = resolve(defs, origins)
        self._check_files(defs, origins)
        return resolved

    def _check_files(self, defs, origins: dict[str, str]) -> None:
        """Files definitions name that only `fstore serve` would read: an Avro
        stream's schema file (a missing or broken one passed apply, then the
        Kafka source could not start)."""
        from fsapp.engine.avro import load_schema
        from fsapp.registry.model import Stream
        problems = []
        for d in defs:
            if isinstance(d, Stream) and d.avro_schema:
                path = Path(d.avro_schema)
                try:
                    load_schema(str(path if path.is_absolute() else self.root / path))
                except RepoError as e:
                    where = origins.get(d.name)
                    problems.append(f"{where + ': ' if where else ''}stream {d.name}: avro_schema: {e}")
        if problems:
            raise DefinitionError(problems)

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


class _Reentered(RepoError):
    """A definition file read its own repo's definitions (reported as is)."""


def _ignored(rel: tuple[str, ...], patterns: list[str]) -> bool:
    """Whether `.fstoreignore` takes the file at `rel` (its path's parts).
    A pattern without '/' matches a file or directory name at any depth
    (`train.py`, `*_job.py`, `notebooks`); one with '/' matches the path
    from the repo's root or one of its directories (`scripts/*.py`,
    `jobs/old`), `**/` standing for any directories, none included."""
    paths = ["/".join(rel[:i]) for i in range(1, len(rel) + 1)]
    for pat in patterns:
        pat = pat.strip("/")
        anywhere = pat.startswith("**/")
        while pat.startswith("**/"):
            pat = pat[3:]
        pats = [pat, f"*/{pat}"] if anywhere else [pat]  # fnmatch's * takes '/' too
        if "/" not in pat:
            if any(fnmatch.fnmatchcase(part, pat) for part in rel):
                return True
        elif any(fnmatch.fnmatchcase(p, q) for p in paths for q in pats):
            return True
    return False


def _python_definitions(path: Path, rel: str) -> list[Definition]:
    files = _running.__dict__.setdefault("files", [])
    files.append(path)
    try:
        namespace = runpy.run_path(str(path), run_name=f"fstore_repo.{path.stem}")
    except DefinitionError as e:
        raise DefinitionError([f"{rel}: {p}" for p in e.problems]) from None
    except _Reentered:
        raise
    except Exception as e:  # a user's file: report any failure with its place
        raise RepoError(f"{rel}: failed to run: {type(e).__name__}: {e}") from e
    finally:
        files.pop()
    out = []
    for value in namespace.values():
        if isinstance(value, (python_api._Def, Definition)):
            obj = python_api.to_model(value)
            if obj not in out:
                out.append(obj)
    return out
