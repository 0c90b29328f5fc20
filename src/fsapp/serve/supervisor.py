"""`fstore serve`: takes the repo's writer lock, starts the engine process and
gunicorn, restarts the engine whenever it exits (it recovers from checkpoint +
WAL) with a backoff and a log line per restart, never giving up, and shuts both
down cleanly on SIGTERM/SIGINT (gunicorn first, then the engine's final
checkpoint). While the engine is down the workers keep serving reads from the
tables it last published; writes answer 503 saying whether anything happened.
"""
from __future__ import annotations

import functools
import hashlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time

from fscore.proc import die_with_parent
from fsapp.registry.repo import Repo


def socket_path_for(repo: Repo) -> str:
    """A Unix socket path under the 108-byte limit, unique per repo."""
    p = str(repo.data_dir / "engine.sock")
    if len(p.encode()) < 100:
        return p
    digest = hashlib.sha1(str(repo.root.resolve()).encode()).hexdigest()[:16]
    return os.path.join(tempfile.gettempdir(), f"fstore-{digest}.sock")


class EngineStartFailed(RuntimeError):
    """The engine process exited (or did not answer) while starting."""


def _engine_answers(path: str, pid: int) -> bool:
    """Whether the engine process `pid` answers on its socket (a ping that
    returns its own pid: never another server's socket, never a stale file)."""
    from fsapp.serve.protocol import EngineClient

    client = EngineClient(path, timeout=2.0)
    try:
        got, _ = client.call("ping")
        return got.get("pid") == pid
    except (OSError, ConnectionError, ValueError):
        return False
    finally:
        client.close()


class EngineRefused(RuntimeError):
    """The engine cannot start on this repo as it is (its data directory is
    damaged, its definitions do not load): restarting it cannot help."""


def _wait_for_engine(path: str, proc: subprocess.Popen, timeout: float) -> None:
    from fsapp.serve.engine_server import EXIT_REFUSED

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            if proc.returncode == EXIT_REFUSED:
                raise EngineRefused("the engine refuses to start on this repo (its reason is on the line above); "
                                    "fix that, then start fstore serve again")
            raise EngineStartFailed(f"the engine exited with code {proc.returncode} while starting")
        if os.path.exists(path) and _engine_answers(path, proc.pid):
            return
        time.sleep(0.05)
    raise EngineStartFailed(f"the engine did not answer within {timeout:.0f}s")


def port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def _wait_for_port(host: str, port: int, proc: subprocess.Popen, timeout: float, what: str = "gunicorn") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with code {proc.returncode} while starting; "
                               f"is port {port} already in use?")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on {host}:{port} within {timeout:.0f}s")


class Service:
    def __init__(self, repo_dir: str, *, host: str = "127.0.0.1", port: int = 9094, workers: int = 2,
                 fsync: str = "always", capacity: int | None = None, max_keys: int | None = None,
                 max_memory: int | None = None, checkpoint_s: float = 60.0, checkpoint_replay_s: float = 2.0,
                 grpc_port: int = 0, grpc_workers: int = 2, log=sys.stderr):
        self.repo = Repo(repo_dir)
        self.grpc_port, self.grpc_workers = grpc_port, grpc_workers
        self.grpc: list[subprocess.Popen] = []
        self.host, self.port, self.workers = host, port, workers
        self.fsync, self.capacity, self.max_keys, self.checkpoint_s = fsync, capacity, max_keys, checkpoint_s
        self.max_memory = max_memory
        self.checkpoint_replay_s = checkpoint_replay_s
        self.socket = socket_path_for(self.repo)
        self.log = log
        self.engine: subprocess.Popen | None = None
        self.engine_started_at = 0.0
        self._backoff = 0.0
        self.gunicorn: subprocess.Popen | None = None
        self.engine_restarts = 0
        # a node of a Kafka group: forwarded reads arrive on a threaded port of their own (fsapp.serve.peer)
        self.peer_port: int | None = None
        self.peer: subprocess.Popen | None = None

    def _say(self, msg: str) -> None:
        print(f"fstore serve: {msg}", file=self.log, flush=True)

    def start_engine(self) -> None:
        """Starts the engine and waits until it answers (EngineStartFailed if it
        exits first: the caller retries with a backoff)."""
        self.engine = subprocess.Popen(
            [sys.executable, "-m", "fsapp.serve.engine_server", "--repo", str(self.repo.root),
             "--socket", self.socket, "--fsync", self.fsync, "--checkpoint-seconds", str(self.checkpoint_s),
             "--checkpoint-replay-seconds", str(self.checkpoint_replay_s),
             "--node", f"{self.host}:{self.port}"]
            + (["--peer-port", str(self.peer_port)] if self.peer_port else [])
            + (["--capacity", str(self.capacity)] if self.capacity else [])
            + (["--max-keys", str(self.max_keys)] if self.max_keys else [])
            + (["--max-memory", str(self.max_memory)] if self.max_memory else []))
        try:
            _wait_for_engine(self.socket, self.engine, 300)
        except EngineStartFailed:
            if self.engine.poll() is None:
                self.engine.kill()
                self.engine.wait()
            raise
        self.engine_started_at = time.monotonic()
        self._say(f"engine pid {self.engine.pid} ready on {self.socket}")

    def start_gunicorn(self) -> None:
        import shutil
        shutil.rmtree(self.repo.data_dir / "metrics", ignore_errors=True)  # counters start with the server
        env = dict(os.environ, FSTORE_REPO=str(self.repo.root.resolve()), FSTORE_ENGINE_SOCKET=self.socket,
                   PROMETHEUS_MULTIPROC_DIR=str(self.repo.data_dir / "metrics"))  # fsapp.serve.shared_metrics
        # --max-requests 0: never recycle workers (a recycle costs a pause);
        # the app is built per worker after fork (no --preload): each maps the tables itself
        self.gunicorn = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "--workers", str(self.workers), "--bind", f"{self.host}:{self.port}",
             "--max-requests", "0", "--graceful-timeout", "10", "--log-level", "warning",
             # above the engine socket's timeouts (20 s; 600 s for training sets and materialize): a slow
             # engine is a JSON 503, not a killed worker
             "--timeout", "660", "--worker-class", "fsapp.serve.gworker.JsonErrorSyncWorker",
             "fsapp.serve.wsgi:application"], env=env)
        _wait_for_port(self.host, self.port, self.gunicorn, 60)
        self._say(f"gunicorn pid {self.gunicorn.pid} with {self.workers} workers on http://{self.host}:{self.port}")
        if os.environ.get("FSTORE_UI", "on") != "off":  # the workers read the same variable (fsapp.serve.wsgi)
            self._say(f"web UI at http://{self.host}:{self.port}/ui")

    def _choose_peer_port(self) -> int | None:
        """The peer port of a group node (`kafka.peer_port`, else a free one); None otherwise."""
        from fsapp.engine.kafka_config import KafkaConfig

        try:
            cfg = KafkaConfig.from_repo(self.repo)
        except Exception:  # noqa: BLE001 - the engine reports a bad kafka section itself, and refuses to start
            return None
        if cfg is None or cfg.assign != "group":
            return None
        if cfg.peer_port:
            if port_in_use(self.host, cfg.peer_port):
                raise RuntimeError(f"kafka.peer_port {cfg.peer_port} on {self.host} is in use by another program; "
                                   "stop it or choose another (0: any free port)")
            return cfg.peer_port
        with socket.socket() as s:
            s.bind((self.host, 0))
            return s.getsockname()[1]

    def _start_peer_process(self) -> subprocess.Popen:
        env = dict(os.environ, FSTORE_REPO=str(self.repo.root.resolve()), FSTORE_ENGINE_SOCKET=self.socket,
                   PROMETHEUS_MULTIPROC_DIR=str(self.repo.data_dir / "metrics"))
        return subprocess.Popen([sys.executable, "-m", "fsapp.serve.peer", "--host", self.host,
                                 "--port", str(self.peer_port)], env=env,
                                preexec_fn=functools.partial(die_with_parent, signal.SIGTERM))

    def start_peer(self) -> None:
        self.peer = self._start_peer_process()
        _wait_for_port(self.host, self.peer_port, self.peer, 60, what="the peer server")
        self._say(f"peer pid {self.peer.pid} on http://{self.host}:{self.peer_port} (reads forwarded by the "
                  "other nodes of the Kafka group)")

    def _start_grpc_process(self) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "fsapp.grpc.server", "--repo", str(self.repo.root),
                                 "--host", self.host, "--port", str(self.grpc_port)],
                                # SIGTERM if the supervisor dies: a kill -9 of `fstore serve` must not
                                # leave servers holding the port
                                preexec_fn=functools.partial(die_with_parent, signal.SIGTERM))

    def start_grpc(self) -> None:
        """`grpc_workers` processes serving gRPC on one port (SO_REUSEPORT)."""
        self.grpc = [self._start_grpc_process() for _ in range(self.grpc_workers)]
        for proc in self.grpc:
            _wait_for_port(self.host, self.grpc_port, proc, 60, what="the gRPC server")
        self._say(f"gRPC pids {', '.join(str(p.pid) for p in self.grpc)} on {self.host}:{self.grpc_port} "
                  "(feast.serving.ServingService, grpc.health.v1)")

    def _watch_grpc(self) -> None:
        for i, proc in enumerate(self.grpc):
            if proc.poll() is not None:
                self._say(f"gRPC server pid {proc.pid} exited with code {proc.returncode}; starting another")
                self.grpc[i] = self._start_grpc_process()

    def run(self) -> int:
        """Serves until a signal. Returns 0 on a clean stop; 1 when it cannot
        start at all (the repo is served already, the port is taken) or
        gunicorn exits."""
        from fsapp.repo_lock import RepoBusy, RepoLock

        if not self.repo.registry_path.exists():
            raise RuntimeError(f"{self.repo.root} has no registry yet: run `fstore apply --repo {self.repo.root}` "
                               "first")
        stop = {"sig": None}

        def on_signal(signum, frame):
            stop["sig"] = signum

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        try:
            self.lock = RepoLock(self.repo.data_dir, "serve", host=self.host, port=self.port).acquire()
        except RepoBusy as e:
            raise RuntimeError(f"{self.repo.root}: {e}") from None
        try:
            if port_in_use(self.host, self.port):
                raise RuntimeError(f"port {self.port} on {self.host} is in use by another program; stop it or "
                                   f"choose another port (--port, or online: port: in fstore.yaml)")
            if self.grpc_port and port_in_use(self.host, self.grpc_port):
                raise RuntimeError(f"gRPC port {self.grpc_port} on {self.host} is in use by another program; stop "
                                   "it, choose another (--grpc-port, or online: grpc_port: in fstore.yaml), or "
                                   "turn gRPC off with --grpc-port 0")
            self.peer_port = self._choose_peer_port()
            self._start_engine_retrying(stop, restart=False)
            if stop["sig"] is None:
                self.start_gunicorn()
            if stop["sig"] is None and self.peer_port:
                self.start_peer()
            if stop["sig"] is None and self.grpc_port:
                self.start_grpc()
            while stop["sig"] is None:
                time.sleep(0.1)
                self._watch_grpc()
                if self.peer is not None and self.peer.poll() is not None:
                    self._say(f"peer server pid {self.peer.pid} exited with code {self.peer.returncode}; "
                              "starting another")
                    self.peer = self._start_peer_process()
                if self.gunicorn.poll() is not None:
                    self._say(f"gunicorn exited with code {self.gunicorn.returncode}; shutting down")
                    return 1
                if self.engine.poll() is not None:
                    up = time.monotonic() - self.engine_started_at
                    self._say(f"engine exited with code {self.engine.returncode} after {up:.0f} s; reads are "
                              "served from the last published tables meanwhile")
                    # a crash loop backs off; an engine that ran a while restarts at once
                    self._backoff = 0.0 if up >= 60 else min(30.0, max(0.5, 2 * self._backoff))
                    self._pause(stop, self._backoff)
                    self._start_engine_retrying(stop, restart=True)
            self._say(f"signal {stop['sig']}: stopping")
            return 0
        finally:
            self.shutdown()
            self.lock.release()

    def _start_engine_retrying(self, stop, restart: bool) -> None:
        """Starts the engine, again and again until it answers (backoff 0.5 s
        doubling to 30 s), a log line each time; returns early on a signal."""
        delay = 0.5
        while stop["sig"] is None:
            if restart:
                self.engine_restarts += 1
                self._say(f"engine restart #{self.engine_restarts} (recovery from checkpoint + WAL)")
            try:
                self.start_engine()
                return
            except EngineStartFailed as e:
                self._say(f"{e}; starting it again in {delay:.1f} s")
                self._pause(stop, delay)
                delay = min(30.0, delay * 2)
                restart = True

    @staticmethod
    def _pause(stop, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while stop["sig"] is None and time.monotonic() < deadline:
            time.sleep(0.05)

    def shutdown(self) -> None:
        servers = [(p, "gRPC server", 10) for p in self.grpc] + [(self.peer, "peer server", 10)]
        for proc, name, grace in (*servers, (self.gunicorn, "gunicorn", 15), (self.engine, "engine", 60)):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(grace)
                except subprocess.TimeoutExpired:
                    self._say(f"{name} did not stop within {grace}s; killing it")
                    proc.kill()
                    proc.wait()
