"""`fstore push | get | historical | materialize`: the SDK from the shell
(wired into fsapp.cli). Each runs against a server (`--url`) or embedded on
a repo (`--repo`). Exit codes: 0 ok, 1 the operation failed (message on
stderr says what to do), 2 bad usage (argparse)."""
from __future__ import annotations

import argparse
import io
import json
import os
import re
import sys

import pyarrow as pa

from fscore.errors import FStoreError

_RAW = argparse.RawDescriptionHelpFormatter
FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl", ".csv": "csv", ".parquet": "parquet",
           ".pq": "parquet"}


def _store(args):
    """A Client for --url, else the embedded FeatureStore of --repo."""
    if args.url:
        from fsapp.sdk.client import Client
        return Client(args.url, api_key=args.api_key or os.environ.get("FSTORE_API_KEY"))
    from fsapp.sdk.embedded import FeatureStore
    return FeatureStore(args.repo)


def _close(store) -> None:
    store.close()


def _format_of(path: str, given: str | None) -> str:
    if given:
        return given
    if path == "-":
        return "jsonl"
    ext = os.path.splitext(path.lower().removesuffix(".gz"))[1]
    if ext not in FORMATS:
        raise ValueError(f"cannot tell the format of {path!r} from its extension; pass --format jsonl|csv|parquet")
    return FORMATS[ext]


def _count_lines(path: str) -> int:
    n = 0
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            n += chunk.count(b"\n")
    return n


def read_batches(path: str, fmt: str, batch_rows: int):
    """(batches of rows, total rows or None). JSON lines give lists of dicts,
    CSV and Parquet give Arrow tables (types kept; the stream casts them)."""
    if path != "-" and not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such file; give a JSON lines, CSV or Parquet file, or - for stdin")
    if fmt == "parquet":
        import pyarrow.parquet as pq
        # Parquet needs random access: stdin is read into memory first
        try:
            pf = pq.ParquetFile(io.BytesIO(sys.stdin.buffer.read()) if path == "-" else path)
        except pa.ArrowInvalid as e:
            raise ValueError(f"{'stdin' if path == '-' else path}: not a Parquet file ({e}); "
                             "pass --format jsonl|csv if it is another format") from None
        return (pa.Table.from_batches([b]) for b in pf.iter_batches(batch_size=batch_rows)), pf.metadata.num_rows
    if fmt == "csv":
        import pyarrow.csv as pcsv
        src = sys.stdin.buffer if path == "-" else path
        total = None if path == "-" else max(0, _count_lines(path) - 1)
        try:
            reader = pcsv.open_csv(src, read_options=pcsv.ReadOptions(block_size=1 << 22))
        except pa.ArrowInvalid as e:
            if "Empty CSV" not in str(e):
                raise
            raise ValueError(f"{'stdin' if path == '-' else path}: empty CSV file; its first line must name the "
                             "columns (e.g. user_id,ts,amount)") from None

        def csv_batches():
            for b in reader:
                for off in range(0, b.num_rows, batch_rows):
                    yield pa.Table.from_batches([b.slice(off, batch_rows)])
        return csv_batches(), total
    if fmt == "jsonl":
        total = None if path == "-" else _count_lines(path)

        def json_batches():
            f = sys.stdin if path == "-" else open(path, encoding="utf-8")
            try:
                batch = []
                for lineno, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    try:
                        row = json.loads(line)
                    except ValueError as e:
                        raise ValueError(f"{path}:{lineno}: not a JSON object ({e}); each line must be one event "
                                         "like {\"user_id\": 1, \"ts\": \"2026-11-27T10:00:00Z\"}") from None
                    if not isinstance(row, dict):
                        raise ValueError(f"{path}:{lineno}: each line must be a JSON object, not {type(row).__name__}")
                    batch.append(row)
                    if len(batch) >= batch_rows:
                        yield batch
                        batch = []
                if batch:
                    yield batch
            finally:
                if f is not sys.stdin:
                    f.close()
        return json_batches(), total
    raise ValueError(f"unknown format {fmt!r}; use jsonl, csv or parquet")


def _batch_len(b) -> int:
    return b.num_rows if isinstance(b, pa.Table) else len(b)


def cmd_push(args) -> int:
    from fsapp.sdk.progress import Progress
    if args.file is None:
        args.file = "-"
    fmt = _format_of(args.file, args.format)
    batches, total = read_batches(args.file, fmt, args.batch_rows)
    store = _store(args)
    bar = Progress(f"push {args.stream}", total)
    accepted = late = 0
    pushed = False
    try:
        for b in batches:
            res = store.push(args.stream, b)
            pushed = True
            accepted += res["accepted"]
            late += res["late"]
            bar.update(_batch_len(b), extra=f"late {late:,}" if late else "")
        if not pushed:  # an empty file still names a stream: an unknown one is an error, not "0 accepted"
            store.push(args.stream, [])
    finally:
        bar.close()
        _close(store)
    print(json.dumps({"stream": args.stream, "accepted": accepted, "late": late}))
    return 0


_INT = re.compile(r"^-?\d+$")


def parse_entities(specs: list[str]) -> dict[str, list]:
    """["user_id=1,2,3", "merchant_id:str=007,m2", "amount:float=60.5,3"] →
    {"user_id": [1, 2, 3], ...}. Values that look like integers are integers
    unless the key says `:str`; `:float` and `:bool` (true/false) are for
    on-demand features' request columns."""
    out = {}
    for spec in specs:
        key, sep, values = spec.partition("=")
        if not sep or not key or not values:
            raise ValueError(f"--entity {spec!r}: write KEY=V1,V2 (e.g. --entity user_id=1,2,3)")
        name, _, typ = key.partition(":")
        if name in out:
            raise ValueError(f"--entity {spec!r}: {name} is given twice; list all its values once "
                             f"({name}=V1,V2,...)")
        if typ not in ("", "str", "int", "float", "bool"):
            raise ValueError(f"--entity {spec!r}: the type after ':' is str, int, float or bool")
        vals = [v.strip() for v in values.split(",")]
        if "" in vals and typ != "str":  # "user_id=1,,2": the empty value made every value text ("row 0 holds '1'")
            raise ValueError(f"--entity {spec!r}: value {vals.index('')} is empty; write KEY=V1,V2 with no "
                             f"empty values (an empty text key: {name}:str=...)")
        if typ == "float":
            try:
                out[name] = [float(v) for v in vals]
            except ValueError:
                raise ValueError(f"--entity {spec!r}: {name}:float takes numbers") from None
        elif typ == "bool":
            if not all(v.lower() in ("true", "false") for v in vals):
                raise ValueError(f"--entity {spec!r}: {name}:bool takes true or false")
            out[name] = [v.lower() == "true" for v in vals]
        elif typ == "int" or (typ == "" and all(_INT.match(v) for v in vals)):
            try:
                out[name] = [int(v) for v in vals]
            except ValueError:
                raise ValueError(f"--entity {spec!r}: {name}:int takes integers") from None
        else:
            out[name] = vals
    lengths = {k: len(v) for k, v in out.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"--entity lists have different lengths {lengths}; give one value per row for every key")
    return out


def _table_text(columns: dict[str, list]) -> str:
    def cell(v):
        if isinstance(v, float):
            return f"{v:.6g}"
        if isinstance(v, list):
            return "[" + ", ".join(cell(x) for x in v) + "]"
        return "-" if v is None else str(v)
    names = list(columns)
    rows = [[cell(v) for v in vals] for vals in zip(*columns.values())]
    widths = [max([len(n)] + [len(r[i]) for r in rows]) for i, n in enumerate(names)]
    lines = ["  ".join(n.ljust(w) for n, w in zip(names, widths))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    return "\n".join(lines)


def cmd_get(args) -> int:
    if bool(args.features) == bool(args.feature_service):
        raise _Usage("give feature references (user_txn:txn_count_1h ...) or --feature-service NAME, not both")
    entities = parse_entities(args.entity)
    store = _store(args)
    try:
        resp = store.get_online_features(features=args.features or None, feature_service=args.feature_service,
                                         entity_rows=entities, full_feature_names=args.full_feature_names,
                                         as_of=args.as_of)
    finally:
        _close(store)
    if args.json:
        print(json.dumps(resp.raw if args.raw else resp.to_dict()))
    else:
        print(_table_text(resp.to_dict()))
    return 0


def cmd_historical(args) -> int:
    if bool(args.features) == bool(args.feature_service):
        raise _Usage("give --features view:feature,... or --feature-service NAME")
    fmt = _format_of(args.entities, args.format)
    _check_output(args.output)  # before the work, not after it
    batches, _ = read_batches(args.entities, fmt, 1 << 20)
    parts = [b if isinstance(b, pa.Table) else pa.Table.from_pylist(b) for b in batches]
    if not parts:
        raise ValueError(f"{args.entities}: no entity rows")
    entity_df = pa.concat_tables(parts, promote_options="default")
    store = _store(args)
    print(f"building a training set for {entity_df.num_rows:,} entity rows ...", file=sys.stderr, flush=True)
    try:
        features = [f.strip() for f in args.features.split(",")] if args.features else None
        table = store.get_historical_features(entity_df, features, feature_service=args.feature_service,
                                              full_feature_names=args.full_feature_names).to_arrow()
    finally:
        _close(store)
    out = args.output
    if out == "-" or out.lower().endswith(".csv"):
        import pyarrow.csv as pcsv
        table = _csv_safe(table)
        if out == "-":
            pcsv.write_csv(table, sys.stdout.buffer)
        else:
            pcsv.write_csv(table, out)
    else:
        import pyarrow.parquet as pq
        pq.write_table(table, out)
    if out != "-":
        print(f"wrote {table.num_rows:,} rows x {table.num_columns} columns to {out}", file=sys.stderr)
    return 0


def _check_output(out: str) -> None:
    if out == "-":
        return
    if os.path.isdir(out):
        raise ValueError(f"-o {out}: is a directory; name the file to write (e.g. {os.path.join(out, 'train.parquet')})")
    parent = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(parent):
        raise FileNotFoundError(f"-o {out}: the directory {parent} does not exist; create it first")
    if not out.lower().endswith((".parquet", ".pq", ".csv")):  # any other name was written as Parquet
        raise ValueError(f"-o {out}: name a .parquet or .csv file (or - for CSV on stdout)")


def _csv_safe(table: pa.Table) -> pa.Table:
    # CSV has no lists: write last_k / vector features as JSON text
    for i, f in enumerate(table.schema):
        if pa.types.is_list(f.type) or pa.types.is_fixed_size_list(f.type):
            table = table.set_column(i, f.name, pa.array([None if v is None else json.dumps(v)
                                                          for v in table.column(i).to_pylist()], pa.string()))
    return table


def cmd_materialize(args) -> int:
    """Materializes view by view: a view that cannot be (its source file is
    missing, a column cannot be read) is reported and skipped, and the others
    still run. Prints `{"views": {name: keys}, "skipped": {name: why}}`;
    exit 1 when a view was skipped."""
    from fsapp.errors import SourceError
    from fsapp.sdk.convert import to_us
    from fsapp.sdk.progress import Progress
    start = None if args.start in ("-", "beginning") else to_us(args.start, "START")
    end = to_us(args.end, "END")
    if start is not None and start >= end:
        raise ValueError("START must be before END (e.g. fstore materialize now-7d now)")
    store = _store(args)
    written, skipped = {}, {}
    try:
        views = [v.strip() for v in args.views.split(",")] if args.views else \
            [v["name"] for v in store.list_feature_views() if v.get("definition", {}).get("online", True)]
        bar = Progress("materialize", len(views), unit="views")
        try:
            for v in views:
                try:
                    res = store.materialize(start, end, views=[v])
                except SourceError as e:  # a server that reports a source problem as an error
                    skipped[v] = str(e)
                    bar.update(1, extra=f"{v}: skipped")
                    continue
                written.update(res["views"])
                skipped.update(res.get("skipped") or {})
                if v not in res["views"] and v not in skipped:
                    skipped[v] = "not materialized (the store did not say why)"
                bar.update(1, extra=f"{v}: skipped" if v in skipped else f"{v}: {res['views'][v]:,} keys")
        finally:
            bar.close()
    finally:
        _close(store)
    for v, why in skipped.items():
        print(f"skipped {v}: {why}", file=sys.stderr)
    print(json.dumps({"views": written, "skipped": skipped}))
    return 1 if skipped else 0


class _Usage(Exception):
    """Arguments that parse but do not make sense together: exit 2."""


def _guard(fn):
    def run(args) -> int:
        try:
            return fn(args)
        except _Usage as e:
            print(f"fstore {args.command}: {e}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130
        except (FStoreError, OSError, ValueError, LookupError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
    return run


def _target(p) -> None:
    p.add_argument("--url", help="push to / read from a running `fstore serve` (e.g. http://127.0.0.1:9094); "
                                 "default: embedded, on --repo")
    p.add_argument("-r", "--repo", default=".", help="repo directory when not using --url (default: .)")
    p.add_argument("--api-key", help="API key for --url (default: $FSTORE_API_KEY)")


def add_commands(sub) -> None:
    p = sub.add_parser("push", help="push events from a file or stdin (JSON lines, CSV, Parquet)", formatter_class=_RAW,
                       description="Appends events to STREAM: each batch is durable when acknowledged. Events beyond\n"
                                   "the stream's allowed lateness are logged offline and counted as late.",
                       epilog="examples:\n  fstore push transactions events.jsonl --repo fraud_repo\n"
                              "  fstore push transactions history.parquet --url http://127.0.0.1:9094\n"
                              "  cat events.csv | fstore push transactions - --format csv")
    p.add_argument("stream", help="stream name (see `fstore registry list`)")
    # (default None, read as "-": fsapp.cli.main tells a FILE after an option from none)
    p.add_argument("file", nargs="?", default=None, help="file to read, or - for stdin (default)")
    p.add_argument("--format", choices=["jsonl", "csv", "parquet"], help="input format (default: from the extension; "
                                                                         "stdin: jsonl)")
    p.add_argument("--batch-rows", type=int, default=10_000, help="rows per push (default 10000)")
    _target(p)
    p.set_defaults(func=_guard(cmd_push))

    p = sub.add_parser("get", help="read online features for entities", formatter_class=_RAW,
                       description="Prints the latest feature values for each entity row (a table, or --json in\n"
                                   "Feast's to_dict() shape). Missing values print as '-'.",
                       epilog="examples:\n  fstore get user_txn:txn_count_1h user_txn:amount_24h --entity user_id=1,2,3\n"
                              "  fstore get txn_context:share_of_24h_spend --entity user_id=1 --entity amount:float=60\n"
                              "  fstore get --feature-service fraud_v1 --full-feature-names \\\n"
                              "      --entity user_id=1,2 --entity merchant_id:str=m1,m2 --url http://127.0.0.1:9094")
    p.add_argument("features", nargs="*", help="feature references view:feature (or view:*)")
    p.add_argument("--feature-service", help="read a feature service's features instead")
    p.add_argument("-e", "--entity", action="append", required=True, metavar="KEY=V1,V2",
                   help="entity key values, one per row; repeat for composite keys; KEY:str= keeps digits as text; "
                        "request columns of on-demand features: KEY:float=, KEY:bool=")
    p.add_argument("--full-feature-names", action="store_true", help="name columns view__feature")
    p.add_argument("--as-of", help="read the values served at this time (ISO-8601, epoch, 'now-10m')")
    p.add_argument("--json", action="store_true", help="print JSON ({column: [values]})")
    p.add_argument("--raw", action="store_true", help="with --json: the full response with statuses and timestamps")
    _target(p)
    p.set_defaults(func=_guard(cmd_get))

    p = sub.add_parser("historical", help="build a point-in-time training set from an entity file", formatter_class=_RAW,
                       description="Reads entity rows (keys + event_timestamp, plus any label columns) from a\n"
                                   "Parquet, CSV or JSON lines file and writes each row with its features as of\n"
                                   "event_timestamp (point-in-time correct) to Parquet or CSV.",
                       epilog="example:\n  fstore historical labels.csv --feature-service fraud_v1 --full-feature-names "
                              "-o train.parquet\n  fstore historical labels.parquet --features user_txn:txn_count_1h "
                              "-o - > train.csv")
    p.add_argument("entities", help="entity file (.parquet, .csv, .jsonl) or - for JSON lines on stdin")
    p.add_argument("--features", help="comma-separated view:feature references")
    p.add_argument("--feature-service", help="a feature service's features instead")
    p.add_argument("-o", "--output", required=True, help="output .parquet or .csv file, or - for CSV on stdout")
    p.add_argument("--format", choices=["jsonl", "csv", "parquet"], help="entity file format (default: extension)")
    p.add_argument("--full-feature-names", action="store_true", help="name columns view__feature")
    _target(p)
    p.set_defaults(func=_guard(cmd_historical))

    p = sub.add_parser("materialize", help="recompute online values from the offline log", formatter_class=_RAW,
                       description="For keys with events in [START, END), computes each view's value as of END\n"
                                   "from the offline event log and writes it online (heals late events, backfills\n"
                                   "views applied after their events arrived). Times: ISO-8601, epoch, 'now',\n"
                                   "relative like now-7d; START '-' means from the beginning. A view that cannot\n"
                                   "be computed (e.g. its source file is missing) is skipped with the reason, the\n"
                                   "others still run, and the exit code is 1.",
                       epilog="examples:\n  fstore materialize now-7d now --repo fraud_repo\n"
                              "  fstore materialize 2026-11-01 2026-11-27T00:00:00Z --views user_txn "
                              "--url http://127.0.0.1:9094")
    p.add_argument("start", help="start of the event range (inclusive), or - for the beginning")
    p.add_argument("end", help="end of the range (exclusive): values are computed as of this time")
    p.add_argument("--views", help="comma-separated feature views (default: every online view)")
    _target(p)
    p.set_defaults(func=_guard(cmd_materialize))
