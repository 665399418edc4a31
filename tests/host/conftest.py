"""Fixtures of the C++ host tests; the build and the engines cache are in host_fixtures.py."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

# isort: off
from host_fixtures import build_host, cached_engines  # first: puts host/ on sys.path
import asymvq_host  # host/asymvq_host.py, the ctypes binding
# isort: on


@pytest.fixture(scope="session")
def host_build() -> Path:
    return build_host()


@pytest.fixture(scope="session")
def runner(host_build) -> Path:
    return host_build / "asymvq-run"


@pytest.fixture(scope="session")
def lib(host_build):
    # ASYMVQ_HOST_LIB: another build of the library (e.g. the AddressSanitizer one, with libasan preloaded)
    return asymvq_host.load_library(os.environ.get("ASYMVQ_HOST_LIB", host_build / "libasymvq_host.so"))


@pytest.fixture(scope="session")
def engines() -> dict[str, Path]:
    return cached_engines()


@pytest.fixture(scope="session")
def tiny(engines) -> Path:
    return engines["tiny"]
