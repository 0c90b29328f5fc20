"""The `fstore` command line.

    fstore demo            the whole product on a temporary repo, in under a minute
    fstore init DIR        create a feature repo with example definitions
    fstore plan / apply    diff / register the repo's definitions
    fstore lineage NAME    what a feature is made of and what uses it
    fstore registry ...    list, describe or show the history of definitions
    fstore serve           run the engine and the REST API (gunicorn; port 9094 or online.port)
    fstore push STREAM F   push events (JSON lines, CSV, Parquet; - for stdin)
    fstore get REFS -e K=V read online features
    fstore historical F    build a point-in-time training set from an entity file
    fstore materialize S E recompute online values from the offline log

`fstore COMMAND --help` shows each command's options and an example;
`fstore --version` the version. `python -m fsapp ...` is the same command.
Exit codes: 0 success, 1 a check failed, 2 bad usage.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Callable, NamedTuple


def _demo(args) -> int:
    from fsapp.demo import run_demo

    return run_demo(events=args.events, keep=args.keep, workers=args.workers, crash=not args.no_crash,
                    out=sys.stdout)


# ---- fstore serve: each option is a flag and a key of fstore.yaml; the flag wins, then the file, then the default

def _integer(lo: int, hi: int | None = None):
    def check(v):
        ok = isinstance(v, int) and not isinstance(v, bool) and v >= lo and (hi is None or v <= hi)
        return None if ok else (f"an integer {lo}..{hi}" if hi else f"an integer >= {lo}")
    return check


# Each worker is a process of its own (~80 MB: Python, Falcon, numpy, pyarrow)
# that forks at start: `workers: 1000` (a typo, or a per-thread habit from
# another server) forked until the machine ran out of memory. Reads are
# CPU-bound, so past a few per core a worker adds memory and context switches.
WORKERS_PER_CORE_MAX = 16


def _workers(v):
    cores = os.cpu_count() or 1
    bad = _integer(1, max(32, WORKERS_PER_CORE_MAX * cores))(v)
    return bad and (f"{bad} ({WORKERS_PER_CORE_MAX} a core on this machine's {cores}; each is a process of "
                    "~80 MB, and reads gain little past 2-4 a core)")


def _positive_number(v):
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 and v != float("inf")
    return None if ok else "a number > 0"


def _text(v):
    return None if isinstance(v, str) and v.strip() else "a non-empty text"


def _size(v):
    from fsapp.sizes import parse_size

    try:
        parse_size(v, "size")
        return None
    except ValueError:
        return "a size such as 2GB, 512MiB or a number of bytes (at least 1MB)"


def _on_off(v):
    # YAML reads a bare on/off as a boolean: both spellings mean the same
    return None if v in ("on", "off", True, False) else "on or off"


def _one_of(*choices):
    def check(v):
        return None if v in choices else "one of " + ", ".join(choices)
    return check


class ServeOption(NamedTuple):
    flag: str
    key: str  # in fstore.yaml, section.name
    type: type
    metavar: str
    default: object
    check: Callable  # value -> None when fine, else what it must be
    help: str


# `fstore serve --help` and docs/api.md ("Running fstore serve") show this table
SERVE_OPTIONS = (
    ServeOption("--host", "online.host", str, "HOST", "127.0.0.1", _text, "address to bind"),
    ServeOption("--port", "online.port", int, "PORT", 9094, _integer(1, 65535), "HTTP port"),
    ServeOption("--workers", "online.workers", int, "N", 2, _workers, "gunicorn workers"),
    ServeOption("--grpc-port", "online.grpc_port", int, "PORT", 6566, _integer(0, 65535),
                "gRPC port (Feast's ServingService and grpc.health.v1); 0 turns gRPC off"),
    ServeOption("--grpc-workers", "online.grpc_workers", int, "N", 2, _workers,
                "gRPC server processes (one port, SO_REUSEPORT)"),
    ServeOption("--fsync", "online.fsync", str, "{always,interval,never}", "always",
                _one_of("always", "interval", "never"),
                "WAL fsync policy: pushes are acknowledged once durable under it"),
    ServeOption("--capacity", "online.capacity", int, "ROWS", None, _integer(1),
                "online rows each feature view starts with (default 4096; tables grow as keys arrive)"),
    ServeOption("--max-keys", "online.max_keys", int, "N", None, _integer(1),
                "the most keys each feature view keeps online (default: no bound); beyond it the oldest keys are "
                "evicted, counted in /metrics and logged"),
    ServeOption("--max-memory", "online.max_memory", str, "SIZE", None, _size,
                "a bound on the live online state of all views together (e.g. 2GB, 512MiB, or bytes); over it "
                "the keys with the oldest event time of the biggest view are evicted, counted in /metrics"),
    ServeOption("--checkpoint-seconds", "online.checkpoint_seconds", float, "S", 60.0, _positive_number,
                "checkpoint period"),
    ServeOption("--checkpoint-replay-seconds", "online.checkpoint_replay_seconds", float, "S", 2.0,
                _positive_number, "checkpoint sooner once a restart would replay this many seconds of work "
                "(the records logged since the last checkpoint)"),
    ServeOption("--ui", "online.ui", str, "{on,off}", "on", _on_off,
                "the web UI at /ui (docs/ui.md): static pages over this API, with the same API keys"),
    ServeOption("--api-keys-file", "auth.api_keys_file", str, "PATH", None, _text,
                "API keys, one 'TOKEN SCOPE[,SCOPE]' a line (scopes read, write, admin; # comments); without "
                "one the API is open"),
)


def _dest(flag: str) -> str:
    return flag[2:].replace("-", "_")


class _BadFlag(ValueError):
    pass


def serve_settings(args, repo) -> dict:
    """{option: value} for `fstore serve`: each flag given, else its key in
    the repo's fstore.yaml, else the default. A bad flag raises _BadFlag, a
    bad file setting RepoError naming its line; `api_keys_file` is an absolute
    path (a flag's is relative to the current directory, the file's to the repo)."""
    from fsapp.registry.errors import RepoError

    online = repo.config.get("online")
    if online is not None and not isinstance(online, dict):
        raise RepoError(f"{repo.config_where('online')}: online: expected a mapping of settings (port: 9094, ...)")
    online = online or {}
    known = [o.key.split(".", 1)[1] for o in SERVE_OPTIONS if o.key.startswith("online.")]
    for key in online:
        if key not in known:
            raise RepoError(f"{repo.config_where('online', key)}: online.{key} is not a setting; the settings are "
                            + ", ".join(known))
    out = {}
    for opt in SERVE_OPTIONS:
        name, (section, key) = _dest(opt.flag), opt.key.split(".")
        value = getattr(args, name)
        if value is not None:
            expected = opt.check(value)
            if expected:
                raise _BadFlag(f"{opt.flag} must be {expected}, got {value!r}")
            if name == "api_keys_file":
                value = str(Path(value).resolve())
        elif opt.key == "auth.api_keys_file":
            path = repo.api_keys_file  # checks the auth section (never inline keys)
            value = str(path) if path is not None else None
        elif section == "online" and online.get(key) is not None:
            value = online[key]
            expected = opt.check(value)
            if expected:
                raise RepoError(f"{repo.config_where(section, key)}: {opt.key} must be {expected}, got {value!r}")
        else:
            value = opt.default
        out[name] = value
    return out


def _serve(args) -> int:
    import os

    from fsapp.api.auth import server_api_keys
    from fsapp.registry.errors import RegistryError
    from fsapp.registry.repo import Repo
    from fsapp.serve.supervisor import Service
    from fsapp.sizes import parse_size

    try:
        repo = Repo(args.repo)
        opts = serve_settings(args, repo)
        keys_file = opts.pop("api_keys_file")
        keys = server_api_keys(keys_file, os.environ.get("FSTORE_API_KEYS", ""))  # checked here, once, in one line
    except _BadFlag as e:
        print(f"fstore serve: {e}", file=sys.stderr)
        return 2
    except (RegistryError, ValueError) as e:
        print(f"fstore serve: {e}", file=sys.stderr)
        return 1
    # the workers read these from the supervisor's environment (gunicorn inherits it)
    os.environ["FSTORE_UI"] = "on" if opts.pop("ui") in ("on", True) else "off"
    if keys_file:
        os.environ["FSTORE_API_KEYS_FILE"] = keys_file
        print(f"fstore serve: {len(keys)} API key(s) from {keys_file}", file=sys.stderr, flush=True)
    else:
        os.environ.pop("FSTORE_API_KEYS_FILE", None)
    try:
        svc = Service(str(repo.root), host=opts["host"], port=opts["port"], workers=opts["workers"],
                      fsync=opts["fsync"], capacity=opts["capacity"], max_keys=opts["max_keys"],
                      max_memory=None if opts["max_memory"] is None else parse_size(opts["max_memory"]),
                      checkpoint_s=opts["checkpoint_seconds"],
                      checkpoint_replay_s=opts["checkpoint_replay_seconds"], grpc_port=opts["grpc_port"],
                      grpc_workers=opts["grpc_workers"])
        return svc.run()
    except (RuntimeError, RegistryError) as e:  # one line a person can act on, no traceback
        print(f"fstore serve: {e}", file=sys.stderr)
        return 1


def version() -> str:
    """The installed distribution's version (pyproject.toml's)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version("fstore")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fstore", description="fstore: a stream-native feature store on one machine",
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"fstore {version()}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    d = sub.add_parser(
        "demo", help="run the whole product on a temporary repo (under a minute)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Creates a card-fraud feature repo, generates a realistic transaction stream (skewed users and\n"
                    "merchants, out-of-order and late events), starts `fstore serve` on a free local port, pushes\n"
                    "the events over HTTP with fsapp.Client, shows one user's features changing, kills the engine\n"
                    "with SIGKILL and shows the restarted engine lost nothing, builds a point-in-time training set,\n"
                    "prints serving latency percentiles, and shuts down. Leaves no process or file behind.",
        epilog="example:\n  fstore demo\n  fstore demo --events 5000 --keep /tmp/fraud_demo   # keep the repo to explore")
    d.add_argument("--events", type=int, default=20_000, help="transactions to generate (default 20000)")
    d.add_argument("--workers", type=int, default=2, help="gunicorn workers (default 2)")
    d.add_argument("--keep", metavar="DIR", default=None, help="create the repo in DIR and keep it (must not exist)")
    d.add_argument("--no-crash", action="store_true", help="skip the engine kill -9 / recovery step")
    d.set_defaults(func=_demo)
    from fsapp.registry.cli import add_commands
    from fsapp.sdk.commands import add_commands as add_sdk_commands

    add_commands(sub)
    add_sdk_commands(sub)
    sv = sub.add_parser(
        "serve", help="run the engine and the REST API",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Starts the engine (the single writer: push -> windows -> online tables, WAL, checkpoints)\n"
                    "and gunicorn with N Falcon workers that read the online tables from shared memory.\n"
                    "A crashed engine is restarted and recovers; SIGTERM stops both cleanly.",
        epilog="Each option can be set in the repo's fstore.yaml instead (key in parentheses; a flag wins):\n"
               "  online:\n    port: 9099\n    workers: 4\n  auth:\n    api_keys_file: secrets/api_keys.txt\n"
               "example:\n  fstore init shop && fstore apply --repo shop && fstore serve --repo shop --workers 2")
    sv.add_argument("-r", "--repo", default=".", help="feature repo directory (default: .)")
    for opt in SERVE_OPTIONS:
        shown = "" if opt.default is None else f"; default {opt.default}"
        sv.add_argument(opt.flag, type=opt.type, default=None, metavar=opt.metavar,
                        help=f"{opt.help} (fstore.yaml: {opt.key}{shown})")
    sv.set_defaults(func=_serve)
    return p


def main(argv=None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and getattr(args, "command", None) == "push" and args.file is None and len(extra) == 1 \
            and not extra[0].startswith("-"):
        # `fstore push STREAM --batch-rows N FILE`: argparse gives an optional
        # positional nothing when an option follows the one before it
        args.file, extra = extra[0], []
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    if args.command == "demo" and args.events < 100:
        parser.error("--events must be >= 100")
    if args.command == "demo" and _workers(args.workers):
        parser.error(f"--workers must be {_workers(args.workers)}, got {args.workers}")
    if getattr(args, "batch_rows", 1) < 1:
        parser.error("--batch-rows must be >= 1")
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
