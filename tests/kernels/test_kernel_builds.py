"""Every Triton build the decoder needs compiles for sm_80 and sm_90, without a GPU.

tests/kernels/kernel_builds.py records the host wrappers' launches over every preset, condition
family and dtype on the meta device and compiles each distinct build with Triton's bundled ptxas
through a stand-in driver (asymvq.kernels.compile_check). It fails on a compile error, on shared
memory over a target's limit and on an offered config that spills registers. A subprocess: the
suite defines the kernels for the interpreter, this needs them defined for the compiler. Builds
are cached under build/kernel-builds/ (a clean clone compiles all: a few minutes on 2 cores).
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent

pytest.importorskip("triton")


def test_every_decoder_build_compiles_for_sm80_and_sm90_within_limits():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["CUDA_VISIBLE_DEVICES"] = ""  # a stand-in driver, also on a machine with a GPU
    r = subprocess.run([sys.executable, str(HERE / "kernel_builds.py")], env=env, capture_output=True, text=True,
                       timeout=1500)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-6000:]
    assert "no problems" in out, out[-3000:]
    for target in ("sm_80", "sm_90"):
        assert f"{target}: " in out and "builds; max registers" in out, out[-3000:]
