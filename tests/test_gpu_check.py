"""bench/gpu_check.sh parses its arguments and says how to use it (its dry run takes minutes: run by hand)."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "gpu_check.sh"
pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")


def _run(*args):
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=60)


def test_syntax_and_help():
    assert subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True).returncode == 0
    r = _run("--help")
    assert r.returncode == 0
    for needle in ("--dry-run", "pip download", "pytest -m gpu", "onnxruntime-gpu", "--split-wheels", "carry"):
        assert needle in r.stdout, needle


@pytest.mark.parametrize("args, needle", [(["--bogus"], "unknown argument '--bogus'"),
                                          (["--budget", "8min"], "--budget: expected whole seconds")])
def test_bad_arguments_fail_with_one_line(args, needle):
    r = _run(*args)
    assert r.returncode == 2 and needle in r.stderr and r.stdout == ""
