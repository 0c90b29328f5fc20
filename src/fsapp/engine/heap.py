"""Free memory the process's allocators hold, given back to the OS.

A load of a million keys leaves ~0.1 GB of freed memory in glibc's heap (the
per-key arrays and batch temporaries freed there: glibc raises its mmap
threshold after freeing a large block, so later blocks of up to 32 MB come
from the heap and leave holes it trims only at its top) and in Arrow's
mimalloc pool: ~9% of the process at 1M keys of the starter repo (1,178 ->
1,071 MB; benches/bench_state.py). `malloc_trim(0)` returns the free pages
of every glibc arena (~6 ms there), `MemoryPool.release_unused()` Arrow's
(~1 ms). The engine does both after each compaction (`fstore serve`: after
each checkpoint)."""
from __future__ import annotations

import ctypes
import ctypes.util
import os

import pyarrow as pa

_libc = None


def _trim():
    global _libc
    if _libc is None:
        try:
            lib = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            _libc = lib.malloc_trim
            _libc.argtypes, _libc.restype = [ctypes.c_size_t], ctypes.c_int
        except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to trim this way
            _libc = False
    if _libc:
        _libc(0)


def rss_bytes() -> int:
    """The process's resident memory (Linux; 0 elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0


def available_bytes() -> int:
    """Memory this process could still take: the kernel's MemAvailable,
    lowered to the room left under a cgroup's memory limit (v2 or v1) when
    there is one. 0 when none of these can be read."""
    avail = 0
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    avail = int(line.split()[1]) * 1024
                    break
    except (OSError, ValueError, IndexError):
        pass
    for limit, usage in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                         ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            with open(limit) as f:
                text = f.read().strip()
            if text == "max" or int(text) >= 1 << 60:  # no limit
                continue
            with open(usage) as f:
                room = max(0, int(text) - int(f.read().strip()))
            avail = min(avail, room) if avail else room
        except (OSError, ValueError):
            continue
    return avail


def release_free_memory() -> int:
    """Gives the allocators' free memory back to the OS; returns by how many
    bytes the resident memory went down."""
    before = rss_bytes()
    pa.default_memory_pool().release_unused()
    _trim()
    return max(0, before - rss_bytes())
