"""The engine process of `fstore serve`: the single writer, serving the
workers' writes (and reads that need the engine: `as_of` in the past,
training sets) over a Unix socket, ticking windows at hop boundaries and
checkpointing periodically. SIGTERM: stop accepting, final checkpoint, close.

    python -m fsapp.serve.engine_server --repo DIR --socket PATH
"""
from __future__ import annotations

import argparse
import gc
import os
import signal
import socketserver
import sys
import threading
import time

import pyarrow as pa

from fsapp.engine.ingest import arrow_ipc_bytes
from fsapp.engine import Engine
from fsapp.engine.engine import DEFAULT_CAPACITY
from fsapp.engine.kafka_config import KafkaConfig
from fsapp.serve.protocol import error_header, recv_frame, send_frame


class EngineService:
    """Dispatches protocol operations to the engine."""

    # Backend methods a worker forwards (fsapp.api.backend.Backend): the
    # engine side of everything a worker cannot do from shared memory.
    FORWARDED = ("online", "push", "historical", "materialize", "health", "ready", "metrics_text", "cluster")

    def __init__(self, engine: Engine):
        from fsapp.api.backend import EngineBackend

        self.engine = engine
        self.backend = EngineBackend(engine)

    def handle(self, op: str, args: dict, body: bytes):
        e = self.engine
        if op == "backend":
            method = args.get("method")
            if method not in self.FORWARDED:
                raise ValueError(f"unknown backend method {method!r}")
            kwargs = dict(args.get("kwargs") or {})
            if method == "push" and body:
                kwargs["rows"] = pa.ipc.open_stream(pa.py_buffer(body)).read_all()
            if method == "historical":
                kwargs["entities"] = pa.ipc.open_stream(pa.py_buffer(body)).read_all()
                table = self.backend.historical(**kwargs)
                return {"rows": table.num_rows}, arrow_ipc_bytes(table)
            result = getattr(self.backend, method)(**kwargs)
            if isinstance(result, bytes):  # encoded JSON (online): sent as the body
                return None, result
            return (list(result) if isinstance(result, tuple) else result), b""
        if op == "ping":
            return {"pid": os.getpid(), "applied_lsn": e.applied_lsn}, b""
        if op == "push":
            rows = pa.ipc.open_stream(pa.py_buffer(body)).read_all() if body else args.get("rows")
            return e.push(args["stream"], rows, offsets=args.get("offsets"),
                          idempotency_key=args.get("idempotency_key")).to_dict(), b""
        if op == "online":
            return e.get_online_features(args.get("features"), args.get("feature_service"), args.get("entities"),
                                         now=args.get("now"),
                                         full_feature_names=bool(args.get("full_feature_names"))), b""
        if op == "historical":
            table = e.get_historical_features(pa.table(args["entities"]), args["features"]).to_arrow()
            return {"rows": table.num_rows}, arrow_ipc_bytes(table)
        if op == "reload":
            e.reload()
            return {"views": sorted(f"{n}@v{v}" for n, v in e.runtimes)}, b""
        if op == "checkpoint":
            return {"lsn": e.checkpoint()}, b""
        if op == "stats":
            return e.stats(), b""
        raise ValueError(f"unknown engine operation {op!r}")


def make_server(service: EngineService, socket_path: str) -> socketserver.ThreadingUnixStreamServer:
    class Handler(socketserver.BaseRequestHandler):
        def handle(self):
            while True:
                try:
                    header, body = recv_frame(self.request)
                except (ConnectionError, OSError, ValueError):
                    return  # the worker went away
                try:
                    result, data = service.handle(header.get("op"), header.get("args") or {}, body)
                    reply = {"ok": True, "result": result}
                except Exception as exc:  # every error goes back to the worker, typed
                    reply, data = error_header(exc), b""
                try:
                    send_frame(self.request, reply, data)
                except OSError:
                    return

    if os.path.exists(socket_path):
        os.unlink(socket_path)
    server = socketserver.ThreadingUnixStreamServer(socket_path, Handler)
    server.daemon_threads = True
    return server


def tune_gc() -> None:
    """The engine process's cyclic garbage collector, set for ingestion: what
    start-up built (registry, DuckDB, Arrow, the recovered state's objects)
    is frozen out of every collection, and the youngest generation is
    collected every 50,000 allocations, not 700. A Kafka poll batch makes
    ~5,000 message objects: with the defaults the collector ran ~7 times a
    batch and, now and then, walked the whole heap (py-spy: 11% of the
    ingest thread; A/B in one process, 300k events, medians of 3: 196k →
    243k events/s). Reference cycles are still collected, later."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


EXIT_REFUSED = 3  # the engine cannot start on this repo as it is (damaged data, bad definitions): do not restart


def run(repo_dir: str, socket_path: str, *, fsync: str = "always", capacity: int = DEFAULT_CAPACITY,
        max_keys: int | None = None, max_memory: int | None = None,
        tick_s: float = 0.2, checkpoint_s: float = 60.0, checkpoint_replay_s: float = 2.0,
        node: str | None = None, peer_port: int | None = None) -> int:
    from fsapp.registry.repo import Repo

    from fscore.errors import WalCorruption
    from fsapp.registry.errors import RegistryError

    try:
        repo = Repo(repo_dir)
        kafka_config = KafkaConfig.from_repo(repo)  # a bad kafka section fails before recovery starts
        engine = Engine(str(repo.data_dir / "engine"), str(repo.registry_path), fsync=fsync, capacity=capacity,
                        max_keys=max_keys, max_memory=max_memory, repo_root=str(repo.root), checkpoint_mode="auto",
                        track_partitions=kafka_config is not None and kafka_config.assign == "group")
    except (WalCorruption, RegistryError) as e:
        # no restart can fix these: say so, and let the supervisor stop
        print(f"engine: refusing to start: {e}", file=sys.stderr, flush=True)
        return EXIT_REFUSED
    ingest = None
    if kafka_config is not None:
        from fsapp.engine.kafka import KafkaIngest
        try:
            ingest = KafkaIngest(engine, kafka_config, node=node, peer_port=peer_port)
        except RegistryError as e:  # e.g. views group mode cannot partition: fix the repo first
            print(f"engine: refusing to start: {e}", file=sys.stderr, flush=True)
            engine.close()
            return EXIT_REFUSED
    server = make_server(EngineService(engine), socket_path)
    tune_gc()
    if ingest is not None:
        ingest.start()
    stop = threading.Event()

    def on_term(signum, frame):
        stop.set()

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    t = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    t.start()
    print(f"engine ready pid={os.getpid()} socket={socket_path} replayed={engine.replayed}"
          + (f" kafka={','.join(sorted(ingest.topics)) or '-'}" if ingest else ""), flush=True)
    schedule = CheckpointSchedule(checkpoint_s, checkpoint_replay_s, time.monotonic())
    applied = engine.registry.snapshot().apply_id
    last_registry_check = time.monotonic()
    try:
        while not stop.wait(_until_next_tick(engine, tick_s)):
            engine.tick()
            if time.monotonic() - last_registry_check >= 1.0:  # `fstore apply` while serving
                last_registry_check = time.monotonic()
                current = engine.registry.snapshot().apply_id
                if current != applied:
                    engine.reload()
                    applied = current
                    print(f"engine reloaded definitions (apply {current})", flush=True)
            if schedule.due(time.monotonic(), engine.replay_backlog_s):
                started = time.monotonic()
                ok = _checkpoint(engine, schedule.retry_s)
                schedule.done(started, time.monotonic(), ok)
                _compact(engine)
    finally:
        if ingest is not None:
            ingest.stop()  # its last batch and offsets go into the final checkpoint below
        server.shutdown()
        server.server_close()
        stop.set()
        engine.stop_growth()  # a growth under way (it holds the checkpoint lock) gives up within a chunk
        _checkpoint(engine, schedule.retry_s)  # if it fails, the WAL still holds everything: recovery replays it
        engine.close()
        if os.path.exists(socket_path):
            os.unlink(socket_path)
    return 0


class CheckpointSchedule:
    """When the engine server checkpoints: every `period_s`, and sooner once
    a restart would replay more than `replay_s` seconds of work
    (`Engine.replay_backlog_s`: the records logged since the last
    checkpoint) — but not sooner than the last checkpoint's own duration
    after it ended, so checkpoints take at most about half the time however
    busy ingestion is. A failed one is retried within 10 s."""

    RETRY_S = 10.0

    def __init__(self, period_s: float, replay_s: float, now: float):
        self.period_s, self.replay_s = period_s, replay_s
        self.retry_s = min(period_s, self.RETRY_S)
        self.next, self.earliest = now + period_s, now

    def due(self, now: float, backlog_s: float) -> bool:
        return now >= self.next or (backlog_s >= self.replay_s and now >= self.earliest)

    def done(self, started: float, ended: float, ok: bool) -> None:
        if ok:
            self.next, self.earliest = ended + self.period_s, ended + (ended - started)
        else:
            self.next = self.earliest = ended + self.retry_s


def _checkpoint(engine: Engine, retry_s: float) -> bool:
    """A checkpoint that never stops the engine: a failure (a full disk) is
    logged, counted, shown by /ready, and retried sooner than the period.
    Returns whether it was written."""
    try:
        engine.checkpoint()
        return True
    except Exception as e:  # noqa: BLE001 - whatever it is, the engine keeps serving
        print(f"engine: checkpoint failed ({type(e).__name__}: {e}); writes go on in the WAL, retrying in "
              f"{retry_s:.0f} s (failure #{engine.checkpoint_failures})",
              file=sys.stderr, flush=True)
        return False


def _compact(engine: Engine) -> None:
    """Window pools laid out again where they hold much free space
    (Engine.compact); a failure (no memory for the new pool) leaves the
    state as it was and is logged."""
    try:
        freed = engine.compact()
    except Exception as e:  # noqa: BLE001 - the engine keeps serving
        print(f"engine: compacting window state failed ({type(e).__name__}: {e})", file=sys.stderr, flush=True)
        return
    if freed:
        print(f"engine: window state compacted, {freed / 1e6:.1f} MB given back", flush=True)


def _until_next_tick(engine: Engine, tick_s: float) -> float:
    """Seconds to sleep: until the next hop boundary or pending event time of
    any view (so a window's value moves within a millisecond of it), at most
    `tick_s` (registry checks, checkpoints, Kafka bookkeeping)."""
    now = engine.clock()
    due = engine.next_change(now)
    if due is None:
        return tick_s
    return min(tick_s, max(0.0, (due - now) / 1e6 + 0.0005))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="fsapp.serve.engine_server")
    ap.add_argument("--repo", required=True)
    ap.add_argument("--socket", required=True)
    ap.add_argument("--fsync", default="always", choices=["always", "interval", "never"])
    ap.add_argument("--capacity", type=int, default=DEFAULT_CAPACITY)
    ap.add_argument("--max-keys", type=int, default=None)
    ap.add_argument("--max-memory", type=int, default=None, help="bytes")
    ap.add_argument("--checkpoint-seconds", type=float, default=60.0)
    ap.add_argument("--checkpoint-replay-seconds", type=float, default=2.0,
                    help="checkpoint sooner once a restart would replay this much work")
    ap.add_argument("--node", default=None, help="host:port this node serves HTTP on (GET /api/v1/cluster)")
    ap.add_argument("--peer-port", type=int, default=None, help="where other nodes' forwarded reads arrive")
    a = ap.parse_args(argv)
    return run(a.repo, a.socket, fsync=a.fsync, capacity=a.capacity, max_keys=a.max_keys,
               max_memory=a.max_memory, checkpoint_s=a.checkpoint_seconds,
               checkpoint_replay_s=a.checkpoint_replay_seconds, node=a.node, peer_port=a.peer_port)


if __name__ == "__main__":
    sys.exit(main())
