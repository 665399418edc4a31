"""Helpers of the C++ host tests (tests/host): the CMake build (build/host, reused between runs) and the
tiny AOTInductor engines (tests/aoti_engines.py, shared with tests/engines/test_aoti_engine.py). Both are
made under a file lock, so pytest-xdist workers that start together build and export once.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from aoti_engines import cached_engines, file_lock, flux_latents_decoder  # noqa: F401  (tests/aoti_engines.py)

ROOT = Path(__file__).resolve().parents[2]
BUILD = ROOT / "build" / "host"
sys.path.insert(0, str(ROOT / "host"))

import asymvq_host  # noqa: E402,F401  (host/asymvq_host.py: the ctypes binding)


def run(cmd, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kw)


def build_host(build_dir: Path = BUILD, *extra_args: str) -> Path:
    """Configure (once) and build the host in ``build_dir``; returns the build dir."""
    if shutil.which("cmake") is None:
        pytest.skip("cmake is not installed")
    with file_lock(build_dir.parent / f".{build_dir.name}.lock"):
        if not (build_dir / "CMakeCache.txt").is_file():
            r = run(["cmake", "-S", ROOT, "-B", build_dir, "-DCMAKE_BUILD_TYPE=Release", f"-DASYMVQ_PYTHON={sys.executable}",
                     *extra_args])
            assert r.returncode == 0, f"cmake configure failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
        r = run(["cmake", "--build", build_dir, "-j", str(min(os.cpu_count() or 1, 4))])
        assert r.returncode == 0, f"cmake build failed:\n{r.stdout[-4000:]}\n{r.stderr[-4000:]}"
    return build_dir
