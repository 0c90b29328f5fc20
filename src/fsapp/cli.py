"""The `fstore` command line.

    fstore demo            the whole product on a temporary repo, in under a minute
    fstore init DIR        create a feature repo with example definitions
    fstore plan / apply    diff / register the repo's definitions
    fstore lineage NAME    what a feature is made of and what uses it
    fstore registry ...    list, describe or show the history of definitions
    fstore serve           run the engine and the REST API (gunicorn) on port 9094
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
import sys


def _demo(args) -> int:
    from fsapp.demo import run_demo

    return run_demo(events=args.events, keep=args.keep, workers=args.workers, crash=not args.no_crash,
                    out=sys.stdout)


def _serve(args) -> int:
    from fsapp.serve.supervisor import Service

    if args.workers < 1 or not 0 < args.port < 65536:
        print("fstore serve: --workers must be >= 1 and --port 1..65535", file=sys.stderr)
        return 2
    if (args.max_keys is not None and args.max_keys < 1) or (args.capacity is not None and args.capacity < 1):
        print("fstore serve: --capacity and --max-keys must be >= 1", file=sys.stderr)
        return 2
    from fsapp.registry.errors import RegistryError

    try:
        svc = Service(args.repo, host=args.host, port=args.port, workers=args.workers, fsync=args.fsync,
                      capacity=args.capacity, max_keys=args.max_keys, checkpoint_s=args.checkpoint_seconds)
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
        epilog="example:\n  fstore init shop && fstore apply --repo shop && fstore serve --repo shop --workers 2")
    sv.add_argument("--repo", default=".", help="feature repo directory (default: .)")
    sv.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    sv.add_argument("--port", type=int, default=9094, help="HTTP port (default 9094)")
    sv.add_argument("--workers", type=int, default=2, help="gunicorn workers (default 2)")
    sv.add_argument("--fsync", default="always", choices=["always", "interval", "never"],
                    help="WAL fsync policy: pushes are acknowledged once durable under it (default always)")
    sv.add_argument("--capacity", type=int, default=None,
                    help="online rows each feature view starts with (default 4096; tables grow as keys arrive)")
    sv.add_argument("--max-keys", type=int, default=None,
                    help="the most keys each feature view keeps online (default: no bound); beyond it the oldest "
                         "keys are evicted, counted in /metrics and logged")
    sv.add_argument("--checkpoint-seconds", type=float, default=60.0, help="checkpoint period (default 60)")
    sv.set_defaults(func=_serve)
    return p


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    if args.command == "demo" and (args.events < 100 or args.workers < 1):
        parser.error("--events must be >= 100 and --workers >= 1")
    if getattr(args, "batch_rows", 1) < 1:
        parser.error("--batch-rows must be >= 1")
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
