import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import asymvq

ROOT = Path(__file__).resolve().parents[1]


def test_the_version_is_written_once():
    """runtime/__init__.py holds it; pyproject.toml, CMake (and through it the C header and asymvq_version())
    and the tests read it from there."""
    from importlib import metadata

    assert metadata.version("asymvq") == asymvq.__version__
    files = [ROOT / "pyproject.toml", ROOT / "CMakeLists.txt", *(ROOT / "host").glob("*.*"), *(ROOT / "include").rglob("*.h"),
             *(ROOT / "cmake").glob("*"), *(ROOT / "tests").rglob("*.py")]
    spelled = [str(f.relative_to(ROOT)) for f in files if f.is_file() and f'"{asymvq.__version__}"' in f.read_text()]
    assert spelled == [], spelled
    assert f'__version__ = "{asymvq.__version__}"' in (ROOT / "runtime" / "__init__.py").read_text()


@pytest.mark.skipif(shutil.which("cmake") is None, reason="cmake is not installed")
def test_cmake_project_configures(tmp_path):
    """Configure only (seconds): the project finds the .venv's libtorch; tests/host/ builds and runs it."""
    r = subprocess.run(["cmake", "-S", str(ROOT), "-B", str(tmp_path), f"-DASYMVQ_PYTHON={sys.executable}"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert f"asymvq {asymvq.__version__}: C++ host (asymvq_host, asymvq-run)" in r.stdout
    assert "asymvq: libtorch 2.13.0 from" in r.stdout
