import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(shutil.which("cmake") is None, reason="cmake is not installed")
def test_cmake_project_configures(tmp_path):
    """Configure only (seconds): the project finds the .venv's libtorch; tests/host/ builds and runs it."""
    r = subprocess.run(["cmake", "-S", str(ROOT), "-B", str(tmp_path), f"-DASYMVQ_PYTHON={sys.executable}"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "asymvq 0.1.0: C++ host (asymvq_host, asymvq-run)" in r.stdout
    assert "asymvq: libtorch 2.13.0 from" in r.stdout
