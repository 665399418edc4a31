"""The tiny AOTInductor engines directories several test files share (the C++ host's tests and
tests/engines/test_aoti_engine.py): exported once under build/host-engines/torch-<version>/, under a file
lock, and reused while they hold the networks this checkout builds. An AOTInductor export is inductor's
C++ compile, about a minute per directory on 2 cores: one set of them per run, not one per file.
Among them a tiny decoder of FLUX's latent space (16 channels, scale 0.3611, shift 0.1159).
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

import torch

from asymvq.engines import load_engine_dir
from asymvq.engines.manifest import manifest_region, read_manifest
from asymvq.models.region import REGION_MODEL

ROOT = Path(__file__).resolve().parents[1]
ENGINES_CACHE = ROOT / "build" / "host-engines"


@contextmanager
def file_lock(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _run(cmd) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True)


def _export(out: Path, *args: str) -> None:
    r = _run([sys.executable, "-m", "asymvq.cli", "export", "--format", "aoti", "--preset", "tiny", "--out", out, *args])
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
    rebuilds each component from the manifest's recorded source and refuses changed weights) and the
    region model it exports (the C++ host decides region AUTO with the manifest's)."""
    if not (base / "complete").is_file():
        return False
    try:
        for name in NAMES:
            load_engine_dir(base / name, backend="torch")
            if manifest_region(read_manifest(base / name)) != REGION_MODEL:
                return False
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
