"""`fstore init | plan | apply | lineage | registry` (wired into fsapp.cli).
Exit codes: 0 ok, 1 a definition/registry problem (message on stderr), 2 bad usage."""
from __future__ import annotations

import argparse
import json
import sys

from fscore.errors import FStoreError

from fsapp.registry.errors import RegistryError

_RAW = argparse.RawDescriptionHelpFormatter


def _out(text: str) -> None:
    sys.stdout.write(text + ("\n" if not text.endswith("\n") else ""))


def _init(args) -> int:
    from fsapp.registry.scaffold import init_repo
    files = init_repo(args.dir, project=args.project)
    _out(f"Created an fstore repo in {args.dir}:")
    for f in files:
        _out(f"  {f}")
    _out(f"Next: cd {args.dir} && fstore plan && fstore apply")
    return 0


def _plan(args) -> int:
    from fsapp.registry.repo import Repo
    repo = Repo(args.repo)
    plan = repo.plan()
    if args.json:
        _out(json.dumps(plan.to_dict(), indent=2))
    else:
        _out(f"Plan for {repo.project} against {repo.registry_path}:")
        _out(plan.render())
        if plan.incompatible:
            _out("Incompatible changes need `fstore apply --allow-incompatible`.")
    return 1 if args.check and plan.pending else 0


def _apply(args) -> int:
    from fsapp.registry.repo import Repo
    repo = Repo(args.repo)
    plan, apply_id = repo.apply(allow_incompatible=args.allow_incompatible)
    _out(plan.render())
    _out("Nothing to apply." if apply_id is None else f"Applied as #{apply_id} to {repo.registry_path}.")
    return 0


def _lineage(args) -> int:
    from fsapp.registry.lineage import lineage, render_lineage
    from fsapp.registry.repo import Repo
    repo = Repo(args.repo)
    with repo.open_registry() as store:
        graph = lineage(store, args.name)
    if args.models:
        from fsapp.integrations import IntegrationError
        from fsapp.integrations.tracking import model_lister, tracking_uri_for
        from fsapp.registry.lineage import with_models

        uri = tracking_uri_for(repo, args.tracking_uri)
        if uri is None:
            raise IntegrationError("--models needs an MLflow tracking URI: --tracking-uri URI, mlflow.tracking_uri "
                                   "in fstore.yaml, or $MLFLOW_TRACKING_URI")
        graph = with_models(graph, model_lister(uri)())
    _out(json.dumps(graph, indent=2) if args.json else render_lineage(graph))
    return 0


def _registry(args) -> int:
    from fsapp.registry.model import kind_label
    from fsapp.registry.render import to_sql
    from fsapp.registry.repo import Repo
    with Repo(args.repo).open_registry() as store:
        if args.registry_command == "list":
            snap = store.snapshot()
            if args.json:
                _out(json.dumps([e.to_dict() for e in snap.entries.values()], indent=2))
                return 0
            _out(f"registry at apply #{snap.apply_id}:")
            for e in sorted(snap.entries.values(), key=lambda e: (e.kind, e.name)):
                _out(f"  {kind_label(e.kind):16} {e.name:28} v{e.version}  ({e.applied_at})")
            return 0
        name, _, ver = args.name.partition("@v")
        if args.registry_command == "history":
            for e in store.history(name):
                _out(f"v{e.version}  {e.kind}  apply #{e.apply_id}  {e.applied_at}")
            return 0
        entry = store.get(name, int(ver) if ver.isdigit() else None)
        if args.json:
            _out(json.dumps(entry.to_dict(), indent=2))
            return 0
        _out(f"-- {kind_label(entry.kind)} {entry.name} v{entry.version}, applied {entry.applied_at} "
             f"(apply #{entry.apply_id})")
        if entry.kind == "feature_view":
            _out("-- keys: " + ", ".join(f"{n} {t}" for n, t in entry.resolved["keys"]))
            _out("-- features: " + ", ".join(f"{n} {t}" for n, t in entry.resolved["features"]))
        if entry.kind == "feature_service":
            _out("-- pinned: " + ", ".join(entry.resolved["features"]))
        keys = [k for k, _ in entry.resolved.get("keys", [])]
        _out(to_sql(entry.definition, keys=keys) + ";")
        return 0


def _guard(fn):
    def run(args) -> int:
        try:
            return fn(args)
        except RegistryError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        except FStoreError as e:  # e.g. fsapp.integrations.IntegrationError (lineage --models)
            print(f"error: {e}", file=sys.stderr)
            return 1
    return run


def add_commands(sub) -> None:
    repo_help = "repo directory holding fstore.yaml (default: current directory)"
    p = sub.add_parser("init", help="create a feature repo with example definitions", formatter_class=_RAW,
                       description="Creates DIR with fstore.yaml and example card-fraud definitions\n"
                                   "(features.sql in the SQL DSL, profiles.py with the Python API) and the\n"
                                   "profile data they name (data/user_profiles.parquet).",
                       epilog="example:\n  fstore init fraud_repo && cd fraud_repo && fstore apply")
    p.add_argument("dir", help="directory to create (may exist, must not hold an fstore.yaml)")
    p.add_argument("--project", help="project name (default: the directory name)")
    p.set_defaults(func=_guard(_init))

    p = sub.add_parser("plan", help="show what apply would change in the registry", formatter_class=_RAW,
                       description="Parses and validates every definition in the repo, then diffs them against\n"
                                   "the registry: added, changed (new version), removed, and incompatible changes\n"
                                   "(key, type, window or function changed; column/feature removed).",
                       epilog="example:\n  fstore plan -r fraud_repo\n  fstore plan --check   # exit 1 if "
                              "anything would change (CI)")
    p.add_argument("-r", "--repo", default=".", help=repo_help)
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    p.add_argument("--check", action="store_true", help="exit 1 when the registry differs from the repo")
    p.set_defaults(func=_guard(_plan))

    p = sub.add_parser("apply", help="register the repo's definitions (atomically)", formatter_class=_RAW,
                       description="Validates the repo and writes every change in one transaction: each changed\n"
                                   "definition gets a new version; old versions stay readable as name@vN.",
                       epilog="example:\n  fstore apply -r fraud_repo\n  fstore apply --allow-incompatible")
    p.add_argument("-r", "--repo", default=".", help=repo_help)
    p.add_argument("--allow-incompatible", action="store_true",
                   help="also apply changes that break readers of the old versions")
    p.set_defaults(func=_guard(_apply))

    p = sub.add_parser("lineage", help="show what a feature is made of and what uses it", formatter_class=_RAW,
                       description="Prints source -> stream -> feature view (version) -> feature -> feature\n"
                                   "service around NAME: a name, name@vN, view:feature or view@vN:feature.",
                       epilog="example:\n  fstore lineage user_txn\n  fstore lineage user_txn:amount_24h --json\n"
                              "  fstore lineage user_txn:amount_24h --models --tracking-uri sqlite:///mlflow.db")
    p.add_argument("name", help="what to trace")
    p.add_argument("-r", "--repo", default=".", help=repo_help)
    p.add_argument("--json", action="store_true", help="print the graph as JSON (nodes and edges)")
    p.add_argument("--models", action="store_true",
                   help="also list the MLflow models logged with fsapp.integrations.mlflow.log_model that read it")
    p.add_argument("--tracking-uri", help="MLflow tracking URI for --models (default: mlflow.tracking_uri in "
                                          "fstore.yaml, then $MLFLOW_TRACKING_URI)")
    p.set_defaults(func=_guard(_lineage))

    p = sub.add_parser("registry", help="list or describe registered definitions", formatter_class=_RAW,
                       description="Reads the registry: list the live definitions, describe one version as\n"
                                   "the SQL that recreates it, or show a definition's version history.",
                       epilog="example:\n  fstore registry list\n  fstore registry describe user_txn@v1\n"
                              "  fstore registry history user_txn")
    rsub = p.add_subparsers(dest="registry_command", metavar="SUBCOMMAND", required=True)
    for name, text in (("list", "live definitions"), ("describe", "one definition (NAME or NAME@vN)"),
                       ("history", "every version of NAME")):
        q = rsub.add_parser(name, help=text, formatter_class=_RAW,
                            epilog=f"example:\n  fstore registry {name}{'' if name == 'list' else ' user_txn'}")
        if name != "list":
            q.add_argument("name", help="definition name (describe also takes NAME@vN)")
        q.add_argument("-r", "--repo", default=".", help=repo_help)
        q.add_argument("--json", action="store_true", help="print JSON")
        q.set_defaults(func=_guard(_registry))
