"""HTTP metrics summed over every gunicorn worker: prometheus_client's
multiprocess mode, the gunicorn convention.

The supervisor empties `<data_dir>/metrics` and names it in the workers'
PROMETHEUS_MULTIPROC_DIR, which prometheus_client reads when it is imported:
each worker then keeps its values in its own mmap'ed files there (no lock
between processes, no file write beyond a few bytes per observation; the
observation itself runs after the response, fsapp.api.deferred), and
`/metrics` on any worker sums the files of every worker the server has had,
so a scrape sees the whole server whichever worker answers it, and a
counter never goes back when a worker is replaced. There are no gauges
among these metrics, so no dead worker's value needs marking
(`prometheus_client.multiprocess.mark_process_dead`).

prometheus_client's files are sparse mmaps: writing to a page the disk
cannot allocate (a full disk) is a SIGBUS, which would kill the worker
right after a response. So each worker allocates its files' blocks when it
starts (PREALLOCATE_BYTES, far more than our series need); when the disk is
full already, that worker counts nothing, says so once, and serves on."""
from __future__ import annotations

import errno
import os
import sys

from prometheus_client import CollectorRegistry, generate_latest, values
from prometheus_client.multiprocess import MultiProcessCollector

from fsapp.api.metrics import HttpMetrics

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# Per file (a counter and a histogram file per worker): ~6,000 series of our
# label sets; the routes are templates and the statuses few, so ~30 method x
# route pairs (17 series each) and their statuses fill a few percent of it.
PREALLOCATE_BYTES = 1 << 20
_FULL = (errno.ENOSPC, errno.EDQUOT)


class SharedHttpMetrics(HttpMetrics):
    def __init__(self, directory: str):
        named = os.environ.get(MULTIPROC_ENV)
        if (not named or os.path.realpath(named) != os.path.realpath(directory)
                or values.ValueClass is values.MutexValue):
            raise RuntimeError(f"{MULTIPROC_ENV} must name {directory} before prometheus_client is imported "
                               f"(fstore serve sets it for its workers); it is {named!r}")
        os.makedirs(directory, exist_ok=True)
        self.directory = directory
        super().__init__()
        try:
            _preallocate(directory, os.getpid())
        except OSError as e:
            if e.errno not in _FULL:
                raise
            self.observe = _count_nothing
            print(f"fstore worker {os.getpid()}: no room for its HTTP metrics in {directory} ({e.strerror}): this "
                  "worker does not count requests until it restarts", file=sys.stderr, flush=True)

    def render(self) -> str:
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=self.directory)
        return generate_latest(registry).decode()


def _preallocate(directory: str, pid: int) -> None:
    """Allocates the blocks of this process's prometheus_client files (the
    names its MmapedDict uses; it then maps them at their full size). A file
    it could not allocate is removed: an empty one would break the sum."""
    for kind in ("counter", "histogram"):
        path = os.path.join(directory, f"{kind}_{pid}.db")
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            if os.fstat(fd).st_size < PREALLOCATE_BYTES:
                os.posix_fallocate(fd, 0, PREALLOCATE_BYTES)  # glibc writes zeros where the filesystem cannot
        except OSError as e:
            os.unlink(path)
            if e.errno in _FULL:
                raise
            # any other refusal: prometheus_client makes its own (sparse) file
        finally:
            os.close(fd)


def _count_nothing(*args, **kwargs) -> None:
    pass
