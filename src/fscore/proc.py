"""Process helpers shared by the store (checkpoint temp files), the serving
runtime (per-worker metrics files) and the demo (no process left behind)."""
from __future__ import annotations

import os


def pid_alive(pid: int) -> bool:
    """True while process `pid` runs (a zombie, exited but not yet reaped by
    its parent, does not count)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, owned by someone else
    if not os.path.isdir("/proc/self"):
        return True  # no /proc (not Linux): kill(0) said it exists
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False  # exited (and reaped) since the kill(0)


class ForkedTaskError(OSError):
    """A forked task failed: its exception's text, or how the child died."""


class ForkedTask:
    """A function running in a forked child (see `fork_task`)."""

    def __init__(self, pid: int, fd: int):
        self.pid, self._fd = pid, fd

    def wait(self) -> None:
        """Waits for the child; raises ForkedTaskError if the function raised
        or the child died (a signal, the OOM killer)."""
        chunks = []
        try:
            while True:
                b = os.read(self._fd, 65536)
                if not b:
                    break
                chunks.append(b)
        finally:
            os.close(self._fd)
        _, status = os.waitpid(self.pid, 0)
        code = os.waitstatus_to_exitcode(status)
        if code:
            said = b"".join(chunks).decode("utf-8", "replace").strip()
            how = f"killed by signal {-code}" if code < 0 else f"exited with status {code}"
            raise ForkedTaskError(said or f"the forked child {how}")


def fork_task(fn, nice: int = 0) -> ForkedTask:
    """Runs `fn()` in a forked child and returns at once: the child sees this
    process's memory as it is now (copy-on-write), so the caller may change
    its state right away. This is how a checkpoint encodes a large state
    without holding the writer's lock for more than the fork (Redis's BGSAVE
    does the same). `fn` must touch only that memory and files: locks other
    threads held at the fork stay held in the child. The child dies with
    its parent (PR_SET_PDEATHSIG) and ignores the parent's signal handlers;
    `nice` lowers its CPU priority (background work yields to the parent's).
    The child runs with the garbage collector off: a collection there freed
    the parent's pending garbage, and a DuckDB connection in it (say, in an
    exception's traceback cycle) crashed its destructor without DuckDB's
    threads (SIGSEGV, now and then, in fork-mode checkpoints)."""
    import gc
    import signal

    parent = os.getpid()
    r, w = os.pipe()
    collecting = gc.isenabled()
    gc.disable()  # off across the fork, so that not even the child's after-fork hooks collect
    try:
        pid = os.fork()
    finally:
        if collecting and os.getpid() == parent:
            gc.enable()
    if pid == 0:  # the child: never returns (os._exit), and never collects the parent's garbage
        code = 1
        try:
            os.close(r)
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                signal.signal(sig, signal.SIG_DFL)
            die_with_parent()
            if nice:
                os.nice(nice)
            if os.getppid() != parent:  # the parent died before the line above
                os._exit(1)
            fn()
            code = 0
        except BaseException as e:  # noqa: BLE001 - reported to the parent, whatever it is
            try:
                os.write(w, f"{type(e).__name__}: {e}".encode("utf-8", "replace")[:8192])
            except OSError:
                pass
        finally:
            os._exit(code)
    os.close(w)
    return ForkedTask(pid, r)


def die_with_parent(sig: int | None = None) -> None:
    """Linux: send this process `sig` (default SIGKILL) when its parent exits
    (best effort elsewhere). Also a subprocess `preexec_fn`."""
    import ctypes
    import signal

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGKILL if sig is None else sig), 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
