"""``manifest.json``: what an engines directory holds, and the checks made before loading it.

Layout (``format_version`` 1)::

    {"format_version": 1, "created": ISO time, "precision": "fp32"|"fp16",
     "source": {"preset", "model", "decoder", "unet_in_channels", "seed"},
     "shapes": {"batch": [min, opt, max], "height": [...], "width": [...]},
     "toolchain": {"torch": ..., "onnx": ..., ...},
     "tokenizer": "tokenizer", "scheduler": "scheduler",       # sub-folders, when present
     "components": {name: {"weights_sha256", "inputs": [TensorSpec], "outputs": [TensorSpec],
                           "artifacts": {"onnx": {"path", "sha256", "files": {path: sha256}},
                                         "trt": {...}, "aoti": {..., "device"}}}}}

Every file an artifact needs is hashed; ``verify_artifact`` recomputes the hashes and
refuses a missing, truncated or swapped file with a ``ManifestError`` (a ValueError).
"""
from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import torch
from torch import nn

from .contract import COMPONENTS, TensorSpec, check_io

MANIFEST = "manifest.json"
FORMAT_VERSION = 1
TOOLCHAIN = ("asymvq", "torch", "onnx", "onnxruntime", "onnxscript", "onnx-graphsurgeon", "polygraphy",
             "diffusers", "transformers", "tensorrt")


class ManifestError(ValueError):
    """An engines directory that is incomplete, corrupted or does not match what was asked."""


def sha256_file(path: str | Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def weights_sha256(module: nn.Module) -> str:
    """Hash of the state dict (names, dtypes, shapes, bytes): identifies the source weights."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())  # raw bytes, any dtype, no copy
    return h.hexdigest()


def toolchain_versions() -> dict[str, str]:
    versions = {}
    for name in TOOLCHAIN:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def artifact_entry(root: Path, files: list[Path], **extra) -> dict:
    """Manifest entry of an artifact made of ``files`` (the first is the one to load)."""
    rel = [Path(f).resolve().relative_to(root.resolve()).as_posix() for f in files]
    return {"path": rel[0], "files": {r: sha256_file(root / r) for r in rel}, **extra}


def new_manifest(*, precision: str, source: dict, shapes: dict) -> dict:
    return {
        "format_version": FORMAT_VERSION,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "precision": precision,
        "source": source,
        "shapes": shapes,
        "toolchain": toolchain_versions(),
        "components": {},
    }


def write_manifest(root: str | Path, manifest: dict) -> Path:
    path = Path(root) / MANIFEST
    path.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return path


def read_manifest(root: str | Path) -> dict:
    """Parse and structurally check ``root/manifest.json``."""
    root = Path(root)
    path = root / MANIFEST
    if not root.is_dir():
        raise ManifestError(f"engines: expected a directory written by `asymvq export`, got {str(root)!r}")
    if not path.is_file():
        raise ManifestError(f"engines: {path} is missing; build the directory with `asymvq export --out {root}`")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ManifestError(f"engines: {path} is not valid JSON ({e})") from None
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ManifestError(
            f"engines: {path} has format_version {manifest.get('format_version')!r}; this asymvq reads {FORMAT_VERSION}"
        )
    comps = manifest.get("components")
    if not isinstance(comps, dict) or not comps:
        raise ManifestError(f"engines: {path} lists no components")
    for name, entry in comps.items():
        if name not in COMPONENTS:
            raise ManifestError(f"engines: {path} has unknown component {name!r} (known: {list(COMPONENTS)})")
        if not entry.get("inputs") or not entry.get("outputs") or not entry.get("artifacts"):
            raise ManifestError(f"engines: {name} in {path} lacks inputs, outputs or artifacts")
    return manifest


def component_specs(root: str | Path, name: str, entry: dict) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """The input and output specs of component ``name``, checked against COMPONENT_IO."""
    inputs = [TensorSpec.from_dict(s) for s in entry["inputs"]]
    outputs = [TensorSpec.from_dict(s) for s in entry["outputs"]]
    try:
        check_io(name, inputs, outputs, f"engines: {root}")
    except ValueError as e:
        raise ManifestError(str(e)) from None
    return inputs, outputs


def verify_artifact(root: str | Path, component: str, entry: dict, fmt: str) -> Path:
    """Check every file of ``entry['artifacts'][fmt]`` against its sha256; return the file to load."""
    root = Path(root)
    artifacts = entry.get("artifacts", {})
    if fmt not in artifacts:
        raise ManifestError(
            f"engines: {component} has no {fmt!r} artifact in {root} (built: {sorted(artifacts)}); "
            f"rebuild with `asymvq export --format {fmt}`"
        )
    art = artifacts[fmt]
    for rel, digest in art["files"].items():
        f = root / rel
        if not f.is_file():
            raise ManifestError(f"engines: {component} {fmt} artifact {f} is missing")
        actual = sha256_file(f)
        if actual != digest:
            raise ManifestError(
                f"engines: {component} {fmt} artifact {f} is corrupted or was replaced "
                f"(sha256 {actual[:12]}..., manifest says {digest[:12]}...); re-export it"
            )
    return root / art["path"]
