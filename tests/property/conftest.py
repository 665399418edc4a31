"""Fixtures of the property tests; hypothesis profiles are in props_settings.py."""
from __future__ import annotations

import props_settings  # noqa: F401  (registers and loads the hypothesis profile)
import pytest


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    """Every property test at one torch thread (tests/conftest.py says why)."""
