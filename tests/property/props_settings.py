"""Hypothesis profiles and the per-test example counts of the property tests (issue 14).

Profiles: ``ci`` (the default under CI=true: derandomized, so a CI run is reproducible, and no
example database) and ``dev`` (random, with the database, so a failure found once is replayed
first). ``HYPOTHESIS_PROFILE=thorough`` multiplies every test's examples by 10 for a long run
by hand. Each test sets its own ``max_examples`` through ``examples(n)`` so that the whole
property suite stays near its time budget (see README, Reliability).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

from hypothesis import HealthCheck, settings

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "fuzz"))  # the fuzzers' check() functions

_COMMON = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                                     HealthCheck.function_scoped_fixture])
settings.register_profile("ci", derandomize=True, database=None, print_blob=True, **_COMMON)
settings.register_profile("dev", **_COMMON)
settings.register_profile("thorough", **_COMMON)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))
SCALE = 10 if settings.get_current_profile_name() == "thorough" else 1


def examples(n: int) -> settings:
    return settings(max_examples=n * SCALE)
