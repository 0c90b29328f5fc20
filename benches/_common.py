"""Shared helpers for the benchmark modules: timing with medians, result rows."""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass


@dataclass
class Row:
    """One line of the runner's table: our figure against a peer's, same run."""

    bench: str
    metric: str
    ours: float
    peer: str
    peer_value: float
    unit: str
    better: str = "lower"  # "lower" or "higher"
    target: str = ""

    @property
    def ratio(self) -> float:
        """How many times better we are than the peer (>1 = we win)."""
        if self.ours == 0 or self.peer_value == 0:
            return float("nan")
        if self.better == "lower":
            return self.peer_value / self.ours
        return self.ours / self.peer_value


def median_seconds(fn, repeat: int = 7, number: int = 1) -> float:
    """Median wall time of `number` calls of fn, over `repeat` rounds, per call."""
    samples = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        for _ in range(number):
            fn()
        samples.append((time.perf_counter() - t0) / number)
    return statistics.median(samples)
