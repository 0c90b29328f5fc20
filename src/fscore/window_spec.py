"""Window and aggregation definitions shared by the Cython kernels
(`fscore.window`) and the pure-Python oracle (`fscore.window_ref`).

Times are int64 microseconds (UTC epoch). The rules these definitions stand
for are written out in docs/semantics.md; this module only validates them and
derives the sizes the kernels need (ring length, which partial fields a column
needs).
"""
from __future__ import annotations

import hashlib
import math
import re
import struct
from dataclasses import dataclass

import numpy as np

from fscore.errors import WindowSpecError

US = 1
MS = 1_000
SECOND = 1_000_000
MINUTE = 60 * SECOND
HOUR = 60 * MINUTE
DAY = 24 * HOUR
_UNITS = {"us": US, "ms": MS, "s": SECOND, "m": MINUTE, "h": HOUR, "d": DAY}

WINDOW_KINDS = ("tumbling", "sliding", "continuous", "session", "lifetime")

AGG_KINDS = (
    "count", "sum", "mean", "min", "max", "first", "last",
    "var_samp", "var_pop", "stddev_samp", "stddev_pop",
    "approx_count_distinct", "last_k",
)
# Largest k of last_k: the merge keeps its scratch on the C stack.
MAX_LAST_K = 256
HLL_P_RANGE = (4, 16)


# The longest duration: the span of event times (years 0001..9999, what ISO-8601 spells). A longer
# window, TTL or lateness means nothing more, and past int64 µs it broke the engine at open.
MAX_DURATION = 253402300799999999 + 62135596800 * 1_000_000
MAX_DURATION_DAYS = MAX_DURATION // DAY


def duration(x: int | str) -> int:
    """Microseconds from an int (already µs) or a string like '5m', '1h', '250ms'."""
    if isinstance(x, bool):
        raise WindowSpecError(f"duration must be an int (µs) or a string like '5m', got {x!r}")
    if isinstance(x, int):
        us = x
    else:
        m = re.fullmatch(r"\s*(\d+)\s*(us|ms|s|m|h|d)\s*", str(x))
        if not m:
            raise WindowSpecError(f"bad duration {x!r}: use an int (µs) or e.g. '30s', '5m', '1h', '7d'")
        us = int(m.group(1)) * _UNITS[m.group(2)]
    if us > MAX_DURATION:
        raise WindowSpecError(f"duration {x!r} is longer than event times reach (years 0001..9999): at most "
                              f"{MAX_DURATION_DAYS}d; for all of a key's events use lifetime()")
    return us


@dataclass(frozen=True)
class WindowSpec:
    """One window shape; build it with `tumbling`, `sliding`, `continuous`,
    `session` or `lifetime` rather than directly."""

    kind: str
    size: int = 0
    hop: int = 0
    gap: int = 0

    def __post_init__(self):
        if self.kind not in WINDOW_KINDS:
            raise WindowSpecError(f"unknown window kind {self.kind!r}; one of {WINDOW_KINDS}")
        if self.kind in ("tumbling", "sliding", "continuous"):
            if self.size <= 0 or self.hop <= 0:
                raise WindowSpecError(f"{self.kind} window needs size > 0 and hop > 0 (µs), got {self}")
            if self.size % self.hop:
                # Buckets are whole hops, so a window must cover whole buckets.
                raise WindowSpecError(
                    f"{self.kind} window size {self.size} must be a multiple of its hop {self.hop}")
        if self.kind == "session" and self.gap <= 0:
            raise WindowSpecError(f"session window needs gap > 0 (µs), got {self.gap}")

    @property
    def buckets_per_window(self) -> int:
        """Closed hop buckets a window covers (0 for session/lifetime)."""
        return self.size // self.hop if self.hop else 0

    def ring_len(self, allowed_lateness: int, max_sessions: int) -> int:
        """Cells per key. Bucketed windows: size/hop closed buckets, + the open
        one, + the buckets an event up to `allowed_lateness` late can land in.
        That is the least that keeps every value as of t >= watermark - lateness
        exact (proof in docs/semantics.md §State)."""
        if self.kind == "lifetime":
            return 1
        if self.kind == "session":
            return max_sessions
        return self.size // self.hop + -(-allowed_lateness // self.hop) + 1

    def to_dict(self) -> dict:
        return {"kind": self.kind, "size": self.size, "hop": self.hop, "gap": self.gap}


def tumbling(size: int | str) -> WindowSpec:
    """As of t: align(t, size) - size <= ts < align(t, size) (last closed window)."""
    s = duration(size)
    return WindowSpec("tumbling", s, s)


def sliding(size: int | str, hop: int | str) -> WindowSpec:
    """As of t: align(t, hop) - size <= ts < align(t, hop) (last closed hop window)."""
    return WindowSpec("sliding", duration(size), duration(hop))


def continuous(size: int | str, hop: int | str) -> WindowSpec:
    """As of t: align(t - size, hop) <= ts < t (fresh head, tail rounded to hop)."""
    return WindowSpec("continuous", duration(size), duration(hop))


def session(gap: int | str) -> WindowSpec:
    """As of t: the most recent session among events with ts < t."""
    return WindowSpec("session", gap=duration(gap))


def lifetime() -> WindowSpec:
    """As of t: every event with ts < t."""
    return WindowSpec("lifetime")


@dataclass(frozen=True)
class Agg:
    """One aggregation of a view. `column=None` only for count(*);
    `k` only for last_k."""

    kind: str
    column: str | None = None
    name: str = ""
    k: int = 0

    def __post_init__(self):
        if self.kind not in AGG_KINDS:
            raise WindowSpecError(f"unknown aggregation {self.kind!r}; one of {AGG_KINDS}")
        if self.column is None and self.kind != "count":
            raise WindowSpecError(f"{self.kind} needs a column")
        if self.kind == "last_k" and not 1 <= self.k <= MAX_LAST_K:
            raise WindowSpecError(f"last_k needs 1 <= k <= {MAX_LAST_K}, got {self.k}")
        if self.kind != "last_k" and self.k:
            raise WindowSpecError(f"only last_k takes k, not {self.kind}")
        if not self.name:
            col = "star" if self.column is None else self.column
            object.__setattr__(self, "name", f"{self.kind}_{col}")

    @classmethod
    def parse(cls, text: str) -> "Agg":
        """'count(*)', 'sum(amount)', 'last_k(amount, 5)', optionally ' as name'."""
        m = re.fullmatch(r"\s*(\w+)\s*\(\s*(\*|\w+)\s*(?:,\s*(\d+)\s*)?\)\s*(?:as\s+(\w+)\s*)?", text)
        if not m:
            raise WindowSpecError(f"cannot parse aggregation {text!r}; e.g. 'sum(amount)', 'last_k(x, 5)'")
        kind, col, k, name = m.groups()
        return cls(kind, None if col == "*" else col, name or "", int(k or 0))

    def to_dict(self) -> dict:
        return {"kind": self.kind, "column": self.column, "name": self.name, "k": self.k}


def normalise_aggs(aggs) -> tuple[Agg, ...]:
    """Aggs from Agg objects or strings; names must be unique."""
    out = tuple(a if isinstance(a, Agg) else Agg.parse(a) for a in aggs)
    if not out:
        raise WindowSpecError("a view needs at least one aggregation")
    names = [a.name for a in out]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise WindowSpecError(f"duplicate aggregation names {sorted(dup)}; give them distinct names")
    return out


def check_agg_specs(spec: WindowSpec, aggs: tuple, agg_specs) -> tuple | None:
    """Per aggregation its own window, for a view whose aggregations share
    one cell layout (docs/architecture.md, "Windows that share a view"):
    bucketed windows (tumbling, sliding, continuous) of one hop, `spec` the
    longest of them (its ring holds every bucket the others read). Returns
    the specs as a tuple, or None when every one is `spec` (a plain view)."""
    if agg_specs is None:
        return None
    specs = tuple(agg_specs)
    if len(specs) != len(aggs):
        raise WindowSpecError(f"agg_specs needs one window per aggregation ({len(aggs)}), got {len(specs)}")
    if all(s == spec for s in specs):
        return None
    bucketed = ("tumbling", "sliding", "continuous")
    for a, s in zip(aggs, specs):
        if not isinstance(s, WindowSpec):
            raise WindowSpecError(f"agg_specs[{a.name!r}] must be a WindowSpec, got {s!r}")
        if s.kind not in bucketed or spec.kind not in bucketed:
            raise WindowSpecError(f"only tumbling, sliding and continuous windows share a view's cells; "
                                  f"{a.name!r} has a {s.kind} window over a {spec.kind} view")
        if s.hop != spec.hop:
            raise WindowSpecError(f"windows that share a view's cells share its hop: {a.name!r} has hop "
                                  f"{s.hop} µs, the view {spec.hop} µs")
        if s.size > spec.size:
            raise WindowSpecError(f"the view's window must be the longest: {a.name!r} covers {s.size} µs, "
                                  f"the view {spec.size} µs")
    return specs


def share_views(groups) -> list[tuple[WindowSpec, tuple, tuple | None]]:
    """A feature view's window groups [(spec, aggs)] as the views that hold
    them: bucketed windows (tumbling, sliding, continuous) of one hop and one
    size share one view (their cells cover the same buckets for as long),
    each aggregation given its own window (`agg_specs`); the others stay one
    view each (agg_specs None). One cell a bucket and one run a key instead of
    one per window. Windows of one hop but different sizes could share too
    (WindowView takes it) but then every cell carries the shorter windows'
    fields for as long as the longest window keeps it: measured and not done
    (docs/architecture.md, "Windows that share a view")."""
    out, at = [], {}
    for spec, aggs in groups:
        key = (spec.hop, spec.size) if spec.kind in ("tumbling", "sliding", "continuous") else None
        if key is not None and key in at:
            merged = out[at[key]]
            merged[1] += aggs
            merged[2] += [spec] * len(aggs)
            continue
        if key is not None:
            at[key] = len(out)
        out.append([spec, list(aggs), [spec] * len(aggs)])
    return [(spec, tuple(aggs), tuple(specs) if any(sp != spec for sp in specs) else None)
            for spec, aggs, specs in out]


def spec_from_dict(d: dict) -> WindowSpec:
    return WindowSpec(d["kind"], d.get("size", 0), d.get("hop", 0), d.get("gap", 0))


def check_view_params(allowed_lateness: int, hll_p: int, max_sessions: int) -> None:
    if allowed_lateness < 0:
        raise WindowSpecError(f"allowed_lateness must be >= 0 µs, got {allowed_lateness}")
    if not HLL_P_RANGE[0] <= hll_p <= HLL_P_RANGE[1]:
        raise WindowSpecError(f"hll_p must be in {HLL_P_RANGE}, got {hll_p}")
    if max_sessions < 1:
        raise WindowSpecError(f"max_sessions must be >= 1, got {max_sessions}")


# ---- hashing for approx_count_distinct (the oracle and the kernels share it) ----
_M64 = (1 << 64) - 1


def splitmix64(x: int) -> int:
    """splitmix64 finaliser of an int64 (two's complement), as the C kernel does."""
    z = (x + 0x9E3779B97F4A7C15) & _M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
    return z ^ (z >> 31)


STRING_ID_BITS = 53  # ids stay exact in a float64, the kernels' input type


def string_id(s: str) -> int:
    """A stable id of a text value (first 8 bytes of its BLAKE2b digest, cut to
    53 bits): how count and approx_count_distinct read text columns, online
    and offline alike. Collisions (~n^2 / 2^54) are far below HLL's error."""
    digest = hashlib.blake2b(s.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << STRING_ID_BITS) - 1)


def string_ids(values) -> np.ndarray:
    """string_id of each value as float64, NaN for None (null)."""
    return np.array([math.nan if v is None else float(string_id(v)) for v in values], dtype=np.float64)


def hash_value(v) -> int:
    """Hash of one non-null value: integral floats in int64 range hash like the
    int they equal (so 3 and 3.0 count once, and an int column agrees with its
    float copy); other floats hash their IEEE-754 bits."""
    if isinstance(v, int) or getattr(v, "dtype", None) is not None and v.dtype.kind in "iu":
        return splitmix64(int(v) & _M64)
    f = float(v)
    if -(2.0 ** 63) <= f < 2.0 ** 63 and f == math.floor(f):
        return splitmix64(int(f) & _M64)
    return splitmix64(struct.unpack("<Q", struct.pack("<d", f))[0])
