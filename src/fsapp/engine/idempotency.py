"""Idempotency keys of pushes: a retry with a key the engine has seen returns
the first answer and applies nothing.

The key travels in the push's WAL record, so recovery rebuilds the window
exactly; checkpoints carry the window too (the WAL before them is deleted).
The window is bounded by count and by age (of the engine clock): a retry
later than that is a new push. Keys are the client's (the `Idempotency-Key`
header, `idempotency_key=` in the SDK); `Client` makes one per push.
"""
from __future__ import annotations

from collections import OrderedDict

DEFAULT_MAX_KEYS = 100_000
DEFAULT_MAX_AGE_US = 24 * 3600 * 1_000_000
MAX_KEY_LENGTH = 255


class IdempotencyWindow:
    """key -> the push's answer {"accepted", "late", "lsn"}, oldest first."""

    def __init__(self, max_keys: int = DEFAULT_MAX_KEYS, max_age_us: int = DEFAULT_MAX_AGE_US):
        self.max_keys, self.max_age_us = max_keys, max_age_us
        self._done: OrderedDict[str, tuple[int, dict]] = OrderedDict()  # key -> (now, answer)

    def __len__(self) -> int:
        return len(self._done)

    def get(self, key: str) -> dict | None:
        hit = self._done.get(key)
        return None if hit is None else dict(hit[1])

    def put(self, key: str, now: int, answer: dict) -> None:
        self._done[key] = (int(now), dict(answer))
        self._done.move_to_end(key)
        while len(self._done) > self.max_keys:
            self._done.popitem(last=False)
        cutoff = int(now) - self.max_age_us
        while self._done:
            oldest = next(iter(self._done.values()))
            if oldest[0] >= cutoff:
                break
            self._done.popitem(last=False)

    def to_list(self) -> list:
        return [[k, now, ans] for k, (now, ans) in self._done.items()]

    @classmethod
    def from_list(cls, items, **kw) -> "IdempotencyWindow":
        w = cls(**kw)
        for k, now, ans in items or ():
            w._done[k] = (int(now), dict(ans))
        return w
