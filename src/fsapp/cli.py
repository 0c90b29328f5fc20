"""The `fstore` command line.

    fstore demo            show the durable online store working end to end
    fstore demo --rows N   with N rows (default 200,000)
    fstore init DIR        create a feature repo with example definitions
    fstore plan / apply    diff / register the repo's definitions
    fstore lineage NAME    what a feature is made of and what uses it
    fstore registry ...    list, describe or show the history of definitions
    fstore serve           run the engine and the REST API (gunicorn) on port 9094

More commands (push, get, materialize from the shell) arrive with the SDK;
`fstore --help` lists what this build has.
Exit codes: 0 success, 1 a check failed, 2 bad usage.
"""
from __future__ import annotations

import argparse
import sys


def _demo(args) -> int:
    from fsapp.demo import run_demo

    return run_demo(rows=args.rows, readers=args.readers, keep=args.keep, out=sys.stdout)


def _serve(args) -> int:
    from fsapp.serve.supervisor import Service

    if args.workers < 1 or not 0 < args.port < 65536:
        print("fstore serve: --workers must be >= 1 and --port 1..65535", file=sys.stderr)
        return 2
    svc = Service(args.repo, host=args.host, port=args.port, workers=args.workers, fsync=args.fsync,
                  capacity=args.capacity, checkpoint_s=args.checkpoint_seconds)
    try:
        return svc.run()
    except RuntimeError as e:
        print(f"fstore serve: {e}", file=sys.stderr)
        return 1


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fstore", description="fstore: a stream-native feature store on one machine",
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    d = sub.add_parser(
        "demo", help="run the store-core demo on a temporary directory",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Writes feature rows durably (WAL, fsync=always) into a shared-memory online table, reads\n"
                    "them from separate reader processes, checkpoints, kills a writer with SIGKILL mid-stream\n"
                    "and shows that recovery keeps every acknowledged row. Leaves no process or file behind.",
        epilog="example:\n  fstore demo --rows 50000 --readers 2")
    d.add_argument("--rows", type=int, default=200_000, help="rows to write (default 200000)")
    d.add_argument("--readers", type=int, default=2, help="reader processes (default 2)")
    d.add_argument("--keep", metavar="DIR", default=None, help="write into DIR and keep it, instead of a temp dir")
    d.set_defaults(func=_demo)
    from fsapp.registry.cli import add_commands

    add_commands(sub)
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
    sv.add_argument("--capacity", type=int, default=100_000, help="online rows per feature view (default 100000)")
    sv.add_argument("--checkpoint-seconds", type=float, default=60.0, help="checkpoint period (default 60)")
    sv.set_defaults(func=_serve)
    return p


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    if getattr(args, "rows", 1) < 1 or getattr(args, "readers", 1) < 0:
        parser.error("--rows must be >= 1 and --readers >= 0")
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
