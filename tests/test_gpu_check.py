"""bench/gpu_check.sh: its arguments, and its dry run as the GPU image would see it.

The dry run makes every package the GPU image lacks unimportable (unless a wheel is carried),
so a step that needs one and does not say so fails here, in `make test`, not on the GPU.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "gpu_check.sh"
pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")


def _run(*args, timeout=60, env=None):
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout, env=env)


def test_syntax_and_help():
    assert subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True).returncode == 0
    r = _run("--help")
    assert r.returncode == 0
    for needle in ("--dry-run", "--steps", "pip download", "pytest -m gpu", "onnxruntime-gpu", "--split-wheels",
                   "carry", "$OUT/summary.json", "make wheels"):
        assert needle in r.stdout, needle


@pytest.mark.parametrize("args, needle", [(["--bogus"], "unknown argument '--bogus'"),
                                          (["--budget", "8min"], "--budget: expected whole seconds"),
                                          (["--steps", "env,nope"], "--steps: unknown step 'nope'")])
def test_bad_arguments_fail_with_one_line(args, needle):
    r = _run(*args)
    assert r.returncode == 2 and needle in r.stderr and r.stdout == ""


def test_dry_run_without_what_the_gpu_image_lacks(tmp_path):
    """Every step at tiny shapes, diffusers and openvino unimportable: results in the folder that comes back."""
    dest = tmp_path / "OUT"
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "ASYMVQ_WHEELS")}
    env.update(OUT=str(dest), TMPDIR=str(tmp_path))  # as on the device machine: $OUT is what comes back
    wheels = ROOT / "bench" / "wheels"
    if wheels.is_dir() and any(wheels.glob("diffusers-*.whl")):
        pytest.skip("bench/wheels carries diffusers: the dry run would not lack it")
    r = _run("--dry-run", "--steps", "env,pytest_gpu,decoder,family_decoders,kernels,profile,ort,family_pipelines",
             "--out", str(dest), timeout=900, env=env)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    files = sorted(p.name for p in dest.iterdir())
    assert len(files) == 2 and "summary.json" in files, files  # within the device tool's return limits
    summary = json.loads((dest / "summary.json").read_text())
    assert summary["final"] and summary["dry_run"]
    status = {s["step"]: s["status"] for s in summary["steps"]}
    assert status["install"] == "ok" and status["env"] == "ok"
    assert status["pytest_gpu"] == "ok" and status["decoder"] == "ok" and status["kernels"] == "ok", status
    # the profile needs diffusers, the ONNX export's cleanup onnx_graphsurgeon and polygraphy: the
    # image lacks them and nothing carried them, so the steps say so instead of failing on an import
    assert status["profile"] == status["ort"] == status["family_pipelines"] == "skipped", status
    # ASUKA's 16-channel decoder with the mask as a 4th branch channel, torch and Triton (interpreted): ~10 s
    assert status["family_decoders"] == "ok", status
    commands = {s["step"]: s["command"] for s in summary["steps"]}
    assert "needs diffusers" in commands["profile"] and "needs onnx_graphsurgeon polygraphy" in commands["ort"]
    assert "needs diffusers" in commands["family_pipelines"]
    asuka = summary["results"]["decoder-tiny-asuka-cpu.json"]
    assert asuka["latent_space"]["channels"] == 16 and asuka["variants"]["triton"]["status"] == "ok", asuka
    assert asuka["variants"]["triton"]["max_abs_diff_vs_torch"] < 1e-4, asuka
    assert any("needs diffusers" in s["command"] for s in summary["steps"] if s["step"] == "profile")
    assert "decoder-tiny-cpu.json" in summary["results"] and "env.json" in summary["results"]
    with tarfile.open(dest / summary["archive"]) as tar:
        names = {Path(n).name for n in tar.getnames()}
    assert {"summary.json", "steps.jsonl", "pytest_gpu.log", "decoder-tiny-cpu.json"} <= names, names
    assert "absent as on the GPU image: diffusers" in r.stdout


def test_ort_bench_runs_on_the_cpu_provider(tmp_path):
    """bench/ort_cuda.py end to end on the tiny decoder (it imported a helper that did not exist)."""
    out = tmp_path / "ort.json"
    r = subprocess.run([os.sys.executable, str(ROOT / "bench" / "ort_cuda.py"), "--device", "cpu", "--preset", "tiny",
                        "--size", "32", "--precision", "fp32", "--components", "decoder", "--warmup", "0",
                        "--repeats", "1", "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    row = json.loads(out.read_text())["components"]["decoder"]
    assert row["status"] == "ok" and row["onnxruntime"]["median"] > 0 and row["max_abs_diff"] < 1e-3
