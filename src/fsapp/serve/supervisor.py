"""`fstore serve`: starts the engine process and gunicorn, restarts a crashed
engine (it recovers from checkpoint + WAL), and shuts both down cleanly on
SIGTERM/SIGINT (gunicorn first, then the engine's final checkpoint)."""
from __future__ import annotations

import hashlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time

from fsapp.registry.repo import Repo


def socket_path_for(repo: Repo) -> str:
    """A Unix socket path under the 108-byte limit, unique per repo."""
    p = str(repo.data_dir / "engine.sock")
    if len(p.encode()) < 100:
        return p
    digest = hashlib.sha1(str(repo.root.resolve()).encode()).hexdigest()[:16]
    return os.path.join(tempfile.gettempdir(), f"fstore-{digest}.sock")


def _wait_for_socket(path: str, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the engine exited with code {proc.returncode} while starting; see its log above")
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.connect(path)
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"the engine did not open {path} within {timeout:.0f}s")


def _wait_for_port(host: str, port: int, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"gunicorn exited with code {proc.returncode} while starting; "
                               f"is port {port} already in use?")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"gunicorn did not listen on {host}:{port} within {timeout:.0f}s")


class Service:
    def __init__(self, repo_dir: str, *, host: str = "127.0.0.1", port: int = 9094, workers: int = 2,
                 fsync: str = "always", capacity: int | None = None, max_keys: int | None = None,
                 checkpoint_s: float = 60.0, log=sys.stderr):
        self.repo = Repo(repo_dir)
        self.host, self.port, self.workers = host, port, workers
        self.fsync, self.capacity, self.max_keys, self.checkpoint_s = fsync, capacity, max_keys, checkpoint_s
        self.socket = socket_path_for(self.repo)
        self.log = log
        self.engine: subprocess.Popen | None = None
        self.gunicorn: subprocess.Popen | None = None
        self.engine_restarts = 0

    def _say(self, msg: str) -> None:
        print(f"fstore serve: {msg}", file=self.log, flush=True)

    def start_engine(self) -> None:
        self.engine = subprocess.Popen(
            [sys.executable, "-m", "fsapp.serve.engine_server", "--repo", str(self.repo.root),
             "--socket", self.socket, "--fsync", self.fsync, "--checkpoint-seconds", str(self.checkpoint_s)]
            + (["--capacity", str(self.capacity)] if self.capacity else [])
            + (["--max-keys", str(self.max_keys)] if self.max_keys else []))
        _wait_for_socket(self.socket, self.engine, 120)
        self._say(f"engine pid {self.engine.pid} ready on {self.socket}")

    def start_gunicorn(self) -> None:
        import shutil
        shutil.rmtree(self.repo.data_dir / "metrics", ignore_errors=True)  # counters start with the server
        env = dict(os.environ, FSTORE_REPO=str(self.repo.root.resolve()), FSTORE_ENGINE_SOCKET=self.socket)
        # --max-requests 0: never recycle workers (a recycle costs a pause);
        # the app is built per worker after fork (no --preload): each maps the tables itself
        self.gunicorn = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "--workers", str(self.workers), "--bind", f"{self.host}:{self.port}",
             "--max-requests", "0", "--graceful-timeout", "10", "--log-level", "warning",
             # above the engine socket's timeout (20 s): a slow engine is a JSON 503, not a killed worker
             "--timeout", "30",
             "fsapp.serve.wsgi:application"], env=env)
        _wait_for_port(self.host, self.port, self.gunicorn, 60)
        self._say(f"gunicorn pid {self.gunicorn.pid} with {self.workers} workers on http://{self.host}:{self.port}")

    def run(self) -> int:
        stop = {"sig": None}

        def on_signal(signum, frame):
            stop["sig"] = signum

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        try:
            self.start_engine()
            self.start_gunicorn()
            while stop["sig"] is None:
                time.sleep(0.1)
                if self.gunicorn.poll() is not None:
                    self._say(f"gunicorn exited with code {self.gunicorn.returncode}; shutting down")
                    return 1
                if self.engine.poll() is not None:
                    self.engine_restarts += 1
                    self._say(f"engine exited with code {self.engine.returncode}; restarting "
                              f"(recovery from checkpoint + WAL), restart #{self.engine_restarts}")
                    self.start_engine()
            self._say(f"signal {stop['sig']}: stopping")
            return 0
        finally:
            self.shutdown()

    def shutdown(self) -> None:
        for proc, name, grace in ((self.gunicorn, "gunicorn", 15), (self.engine, "engine", 60)):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(grace)
                except subprocess.TimeoutExpired:
                    self._say(f"{name} did not stop within {grace}s; killing it")
                    proc.kill()
                    proc.wait()
