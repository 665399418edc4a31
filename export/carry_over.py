"""What a re-export keeps of the engines directory it replaces.

An export builds a whole new directory and swaps it in (``atomic_dir``), so whatever of the old
one should survive is linked into the new one first: the components this export does not
rewrite, the tokenizer and scheduler when no SD network is re-exported, a rewritten component's
artifacts in the formats not re-exported (same weights and specs), and TensorRT's timing cache.
Only what the old manifest lists and its hashes confirm is kept; the old components are
dropped, with a warning, when the directories cannot share one manifest (another precision,
source, shape range or latent space) or the old manifest cannot be read.
"""
from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path

from asymvq.engines.manifest import MANIFEST, ManifestError, read_manifest, safe_path, verify_artifact
from asymvq.engines.tensorrt_engine import TIMING_CACHE
from asymvq.models.sources import Source

from .atomic_dir import link_or_copy

log = logging.getLogger(__name__)

SHARED_KEYS = ("precision", "source", "shapes", "latent_space")  # one value for the whole directory


def previous_manifest(out: Path, manifest: dict) -> dict | None:
    """The manifest at ``out`` when its components can join ``manifest`` (the new one), else None."""
    if not (out / MANIFEST).exists():
        return None
    try:
        old = read_manifest(out)
    except ManifestError as e:
        log.warning("%s: replacing it whole, its manifest cannot be read: %s", out, e)
        return None
    differ = [k for k in SHARED_KEYS if _shared(k, old[k]) != _shared(k, manifest[k])]
    if differ:
        log.warning("%s: its components %s are dropped: this export's %s differ from theirs",
                    out, sorted(old["components"]), ", ".join(differ))
        return None
    return old


def _shared(key: str, value):
    if key == "source":  # Source's defaults fill the keys a manifest leaves out
        return {f.name: f.default for f in dataclasses.fields(Source)} | value
    return value


def _link_artifact(out: Path, staged: Path, name: str, entry: dict, fmt: str) -> bool:
    """Link the files of ``entry``'s ``fmt`` artifact into ``staged`` when their hashes check; False if not."""
    try:
        verify_artifact(out, name, entry, fmt)
    except ManifestError as e:
        log.warning("%s: not keeping the %s %s artifact: %s", out, name, fmt, e)
        return False
    for rel in entry["artifacts"][fmt]["files"]:
        link_or_copy(out / rel, staged / rel)
    return True


def _link_tree(out: Path, staged: Path, rel: str, what: str) -> None:
    src = safe_path(out, rel, what)
    for folder, _, files in os.walk(src):
        for f in files:
            path = Path(folder) / f
            link_or_copy(path, staged / path.relative_to(out))


def keep_components(old: dict, out: Path, staged: Path, manifest: dict, rewritten: list[str]) -> None:
    """Link the old components not in ``rewritten`` (and the shared files nothing rewrites) into ``staged``;
    their entries go into ``manifest``."""
    for name, entry in old["components"].items():
        if name in rewritten:
            continue
        kept = {fmt: art for fmt, art in entry["artifacts"].items() if _link_artifact(out, staged, name, entry, fmt)}
        if kept:
            manifest["components"][name] = {**entry, "artifacts": kept}
    for key in ("tokenizer", "tokenizer_2", "scheduler"):
        if key in old and key not in manifest:
            _link_tree(out, staged, old[key], key)
            manifest[key] = old[key]
    if (out / TIMING_CACHE).is_file():
        link_or_copy(out / TIMING_CACHE, staged / TIMING_CACHE)


def keep_artifacts(old: dict | None, out: Path, staged: Path, name: str, entry: dict, formats) -> None:
    """Add to ``entry`` (component ``name``, being re-exported in ``formats``) its old artifacts in other
    formats, when the weights and specs are unchanged; TensorRT plans go when the ONNX they came from does."""
    prev = None if old is None else old["components"].get(name)
    if prev is None or any(prev[k] != entry[k] for k in ("weights_sha256", "inputs", "outputs")):
        return
    replaced = set(formats) | ({"trt"} if "onnx" in formats else set())
    for fmt in prev["artifacts"]:
        if fmt not in replaced and _link_artifact(out, staged, name, prev, fmt):
            entry["artifacts"][fmt] = prev["artifacts"][fmt]
