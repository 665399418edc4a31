"""Every committed fuzzer input (minimized corpus and the crash inputs the fuzzers found, each
fixed) replayed through the fuzzers' property: the regression tests of issue 14."""
from __future__ import annotations

from pathlib import Path

import fuzz_form
import fuzz_manifest
import pytest

HERE = Path(__file__).parent


def _inputs(name: str):
    return sorted(p for d in ("corpus", "regressions") for p in (HERE / d / name).glob("*") if p.is_file())


@pytest.mark.parametrize("path", _inputs("form"), ids=lambda p: f"{p.parent.parent.name}/{p.name[:16]}")
def test_form_input(path):
    fuzz_form.check(path.read_bytes())


@pytest.mark.parametrize("path", _inputs("manifest"), ids=lambda p: f"{p.parent.parent.name}/{p.name[:16]}")
def test_manifest_input(path):
    fuzz_manifest.check(path.read_bytes())


def test_every_regression_is_named():
    """Crash inputs are kept under a name that says what they found (not libFuzzer's hash)."""
    for p in (HERE / "regressions").rglob("*"):
        assert not p.name.startswith("crash-"), p
