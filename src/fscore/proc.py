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
