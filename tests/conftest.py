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
