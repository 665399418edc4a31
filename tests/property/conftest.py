"""Fixtures of the property tests; hypothesis profiles are in props_settings.py."""
from __future__ import annotations

import pytest
import torch

import props_settings  # noqa: F401  (registers and loads the hypothesis profile)


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
