"""Byte sizes as people write them in fstore.yaml and on the command line."""
from __future__ import annotations

import re

_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")
MIN_SIZE = 10**6


def parse_size(value: int | str, what: str = "size") -> int:
    """Bytes from an int or "2GB" / "512 MiB" / "1e6"-free text; at least 1 MB
    (a smaller memory bound would evict every key). ValueError says what to write."""
    if isinstance(value, bool):
        raise ValueError(f"{what} must be a size such as 2GB or 512MiB, got {value!r}")
    if isinstance(value, int):
        n = value
    else:
        m = _SIZE.match(str(value))
        unit = m.group(2).lower() if m else None
        if m is None or unit not in _UNITS:
            raise ValueError(f"{what} must be a size such as 2GB, 512MiB or a number of bytes, got {value!r}")
        n = int(float(m.group(1)) * _UNITS[unit])
    if n < MIN_SIZE:
        raise ValueError(f"{what} must be at least 1MB, got {value!r}")
    return n
