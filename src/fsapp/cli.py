"""The `fstore` command line.

    fstore demo            show the durable online store working end to end
    fstore demo --rows N   with N rows (default 200,000)
    fstore init DIR        create a feature repo with example definitions
    fstore plan / apply    diff / register the repo's definitions
    fstore lineage NAME    what a feature is made of and what uses it
    fstore registry ...    list, describe or show the history of definitions

More commands (serve, push, get, materialize) arrive with the serving runtime;
`fstore --help` lists what this build has.
Exit codes: 0 success, 1 a check failed, 2 bad usage.
"""
from __future__ import annotations

import argparse
import sys


def _demo(args) -> int:
    from fsapp.demo import run_demo

    return run_demo(rows=args.rows, readers=args.readers, keep=args.keep, out=sys.stdout)


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
