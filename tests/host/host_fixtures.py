"""Helpers of the C++ host tests (tests/host): the CMake build (build/host, reused between runs) and the
tiny AOTInductor engines (build/host-engines/torch-<version>, exported once and reused while
they hold the networks this checkout builds), among them a tiny decoder of FLUX's latent space
(16 channels, scale 0.3611, shift 0.1159). Both are made under a file lock, so pytest-xdist workers
that start together build and export once.
"""
from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from asymvq.engines import load_engine_dir

ROOT = Path(__file__).resolve().parents[2]
BUILD = ROOT / "build" / "host"
ENGINES_CACHE = ROOT / "build" / "host-engines"
sys.path.insert(0, str(ROOT / "host"))

import asymvq_host  # noqa: E402,F401  (host/asymvq_host.py: the ctypes binding)


@contextmanager
def file_lock(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


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


def _export(out: Path, *args: str) -> None:
    r = run([sys.executable, "-m", "asymvq.cli", "export", "--format", "aoti", "--preset", "tiny", "--out", out, *args])
    assert r.returncode == 0, f"asymvq export failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"


def _merge_component(dst: Path, src: Path, component: str) -> None:
    """Copy one exported component (its package and manifest entry) from src into dst."""
    ms, md = (json.loads((d / "manifest.json").read_text()) for d in (src, dst))
    entry = ms["components"][component]
    for rel in entry["artifacts"]["aoti"]["files"]:
        shutil.copy2(src / rel, dst / rel)
    md["components"][component] = entry
    (dst / "manifest.json").write_text(json.dumps(md, indent=2, sort_keys=True) + "\n")


NAMES = ("tiny", "t2i", "flux-latents")


def flux_latents_decoder(path: Path) -> Path:
    """ASUKA's decoder at the tiny size (preset ``tiny-asuka``: FLUX's latent space, 16 channels, scale
    0.3611, shift 0.1159, no post-quant conv, the mask as a 4th branch channel), seeded, saved at ``path``."""
    from asymvq import AsymmetricDecoder, save_decoder

    torch.manual_seed(0)
    save_decoder(AsymmetricDecoder("tiny-asuka").eval(), path)
    return path


def _still_current(base: Path) -> bool:
    """The cached engines hold the networks this checkout builds (public check: the torch backend
    rebuilds each component from the manifest's recorded source and refuses changed weights)."""
    if not (base / "complete").is_file():
        return False
    try:
        for name in NAMES:
            load_engine_dir(base / name, backend="torch")
    except Exception:  # noqa: BLE001 - any refusal (weights, I/O names, files) means re-export
        return False
    return True


def cached_engines() -> dict[str, Path]:
    """{"tiny": all five components, "t2i": the 4-channel UNet + decoder-plain, "flux-latents": decoder and
    decoder-plain of ``flux_latents_decoder``}, exported once.

    Kept under build/host-engines/torch-<version>/ and reused while its networks are the ones
    this checkout builds (checked on every session, a few seconds), so edits elsewhere in the
    package cost no re-export. ``ASYMVQ_HOST_ENGINES=DIR`` (holding tiny/, t2i/ and flux-latents/) uses
    directories exported elsewhere.
    """
    if os.environ.get("ASYMVQ_HOST_ENGINES"):
        base = Path(os.environ["ASYMVQ_HOST_ENGINES"])
        return {name: base / name for name in NAMES}
    base = ENGINES_CACHE / f"torch-{torch.__version__}"
    with file_lock(ENGINES_CACHE / ".lock"):
        if not _still_current(base):
            shutil.rmtree(base, ignore_errors=True)
            _export(base / "tiny", "--component", "all")
            # text-to-image: only the 4-channel UNet is new; decoder-plain is the same package
            _export(base / "t2i", "--component", "unet", "--unet-channels", "4")
            _merge_component(base / "t2i", base / "tiny", "decoder-plain")
            decoder = flux_latents_decoder(base / "flux-latents-decoder")
            _export(base / "flux-latents", "--decoder", decoder, "--component", "decoder,decoder-plain")
            (base / "complete").write_text(torch.__version__ + "\n")
    return {name: base / name for name in NAMES}
