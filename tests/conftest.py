"""Shared fixtures: a seeded RNG that prints its seed on failure, and the
hypothesis profile used by the whole suite (no deadlines: CI machines are
shared and noisy; sizes kept small so the suite stays under ~10 minutes)."""
import os
import random

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "fstore",
    deadline=None,
    max_examples=int(os.environ.get("FSTORE_HYPOTHESIS_EXAMPLES", "60")),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True,
)
settings.load_profile("fstore")


@pytest.fixture
def seed(request):
    """A per-test seed (FSTORE_SEED to replay); shown in the report on failure."""
    value = int(os.environ.get("FSTORE_SEED", random.SystemRandom().randrange(2**32)))
    request.node.user_properties.append(("seed", value))
    yield value


@pytest.fixture
def rng(seed):
    return np.random.default_rng(seed)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        for name, value in item.user_properties:
            if name == "seed":
                report.sections.append(("seed", f"replay with FSTORE_SEED={value}"))


class _HeldParquetWrites:
    """The offline log's Parquet writes wait until `release()` (each one
    first sets `entered`): a flush or checkpoint caught in the middle."""

    def __init__(self, monkeypatch):
        import threading

        import pyarrow.parquet as pq
        from fsapp.offline import eventlog

        self._mp, self._mod, self._real = monkeypatch, eventlog, pq.write_table
        self.entered, self._go = threading.Event(), threading.Event()
        self._fail = None

        def held(table, path, **kw):
            self.entered.set()
            assert self._go.wait(20), "the test never released the held Parquet write"
            if self._fail is not None:
                raise self._fail
            return self._real(table, path, **kw)

        monkeypatch.setattr(eventlog.pq, "write_table", held)

    def release(self, fail: BaseException | None = None) -> None:
        """Lets held writes go on (or fail with `fail`); later writes are real."""
        self._fail = fail
        if fail is None:
            self._mp.setattr(self._mod.pq, "write_table", self._real)
        self._go.set()

    def restore(self) -> None:
        self._mp.setattr(self._mod.pq, "write_table", self._real)


@pytest.fixture
def held_parquet_writes(monkeypatch):
    return _HeldParquetWrites(monkeypatch)
