"""``manifest.json``: what an engines directory holds, and the checks made before loading it.

Layout (``format_version`` 2)::

    {"format_version": 2, "created": ISO time, "precision": "fp32"|"fp16",
     "latent_space": {"channels": 4, "scaling_factor": 0.18215, "shift_factor": 0.0},
     "source": {"preset", "model", "decoder", "unet_in_channels", "seed"},
     "shapes": {"batch": [min, opt, max], "height": [...], "width": [...]},
     "toolchain": {"torch": ..., "onnx": ..., ...},
     "family": "sd"|"sdxl"|"flux-fill",                        # absent: sd (directories before the families)
     "region": {"default_margin": 4, "time_fit": [a, b], "auto_min_speedup": 1.2},  # absent: exported before it
     "tokenizer": "tokenizer", "tokenizer_2": "tokenizer_2", "scheduler": "scheduler",  # sub-folders, when present
     "components": {name: {"weights_sha256", "inputs": [TensorSpec], "outputs": [TensorSpec],
                           "artifacts": {"onnx": {"path", "sha256", "files": {path: sha256}},
                                         "trt": {...}, "aoti": {..., "device"}}}}}

``latent_space`` is the directory's, shared by every component that takes or yields latents
(the VAE encoder's moments, the UNet's sample and noise_pred, the decoders' latent): the
loaders, the pipeline and the C++ host read the channel count, scaling and shift factors from
it, and the specs' channel dims must agree with it. Format 1 did not record it and is refused
(re-export: the manifest records the source).

``region`` is asymvq.models.region's ``RegionModel`` at export time (the default margin of a region decode and
the cost model of region="auto"), for the C++ host, which has no other copy of those numbers: a directory
exported before the key existed still opens everywhere, and the host refuses only what needs the model
(region AUTO, the default margin) there, naming the re-export. The Python side decides with its own
``REGION_MODEL``, the package being that model's one home.

``family`` is the pipeline family the components belong to (``asymvq.models.components.FAMILIES``); a
directory holds the components of one family only (its denoiser, when there, says the same), so the
runtime builds that family's pipeline from it (``InpaintPipeline.from_engines``).

Every file an artifact needs is hashed; ``verify_artifact`` recomputes the hashes and
refuses a missing, truncated or swapped file with a ``ManifestError`` (a ValueError).

Crash safety: ``write_manifest`` replaces the file in one rename after an fsync (a kill leaves the
old manifest or the new one, never an empty one), and ``asymvq export`` builds the whole directory
in a hidden sibling (``staging_name``) that it renames into place; ``read_manifest`` refuses such a
sibling by name, so an unfinished export is never loaded.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath, PureWindowsPath

import torch
from torch import nn

from asymvq.models.components import FAMILIES, FAMILY_COMPONENTS, SD
from asymvq.models.environment import package_versions
from asymvq.models.latent_space import LatentSpace
from asymvq.models.region import REGION_MODEL, RegionModel

from .contract import COMPONENTS, PRECISION_DTYPES, VOCABULARY, TensorSpec, check_io, split_dim

MANIFEST = "manifest.json"
FORMAT_VERSION = 2  # 2: the latent space is recorded (format 1 directories are refused: re-export them)
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
    """The installed packages of TOOLCHAIN (missing ones left out)."""
    return {name: v for name, v in package_versions(TOOLCHAIN).items() if v is not None}


def artifact_entry(root: Path, files: list[Path], **extra) -> dict:
    """Manifest entry of an artifact made of ``files`` (the first is the one to load)."""
    rel = [Path(f).resolve().relative_to(root.resolve()).as_posix() for f in files]
    return {"path": rel[0], "files": {r: sha256_file(root / r) for r in rel}, **extra}


def new_manifest(*, precision: str, source: dict, shapes: dict, latent_space: LatentSpace, family: str = SD,
                 region: RegionModel = REGION_MODEL) -> dict:
    return {
        "format_version": FORMAT_VERSION,
        "family": family,
        "region": region.to_dict(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "precision": precision,
        "latent_space": latent_space.to_dict(),
        "source": source,
        "shapes": shapes,
        "toolchain": toolchain_versions(),
        "components": {},
    }


def fsync_dir(path: str | Path) -> None:
    """Make the entries of directory ``path`` (files created or renamed in it) durable."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    except OSError:  # some filesystems refuse fsync on a directory; their renames are as durable as they get
        pass
    finally:
        os.close(fd)


def replace_file(path: str | Path, data: bytes) -> Path:
    """``path`` holding ``data``, replaced atomically: written beside, fsync'd, renamed over, directory fsync'd
    (a kill leaves the old file or the new one, never a truncated one)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)
    return path


def write_manifest(root: str | Path, manifest: dict) -> Path:
    """``root/manifest.json``, replaced atomically (``replace_file``)."""
    return replace_file(Path(root) / MANIFEST, (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode())


# An export of DIR is built in DIR's sibling ".DIR.export-<pid>-<random>" and renamed over DIR when
# complete; a swap that cannot exchange the two moves the old DIR aside to ".DIR.replaced-<pid>-<random>".
STAGING_KINDS = ("export", "replaced")
_STAGING = re.compile(r"^\.(?P<target>.+)\.(?P<kind>export|replaced)-(?P<pid>\d+)-[^.]+$")


def staging_name(target: str, kind: str) -> str:
    """The name prefix of a sibling of the engines directory ``target`` (a name) that an export writes."""
    if kind not in STAGING_KINDS:
        raise ValueError(f"kind must be one of {list(STAGING_KINDS)}, got {kind!r}")
    return f".{target}.{kind}-{os.getpid()}-"


def parse_staging_name(name: str) -> tuple[str, str, int] | None:
    """(target name, kind, pid of the export) of a staging sibling's ``name``; None for any other name."""
    m = _STAGING.match(name)
    return None if m is None else (m["target"], m["kind"], int(m["pid"]))


def read_manifest(root: str | Path) -> dict:
    """Parse and structurally check ``root/manifest.json``: every key a loader reads has the right
    type, and every path it names stays inside ``root`` (checked again on disk by ``safe_path``)."""
    root = Path(root)
    path = root / MANIFEST
    if not root.is_dir():
        raise ManifestError(f"engines: expected a directory written by `asymvq export`, got {str(root)!r}")
    staging = parse_staging_name(root.name)
    if staging is not None:
        raise ManifestError(f"engines: {root} is a temporary directory of an `asymvq export` of "
                            f"{str(root.parent / staging[0])!r} that did not finish (the next export removes it); "
                            "load the engines directory itself")
    if not path.is_file():
        raise ManifestError(f"engines: {path} is missing; build the directory with `asymvq export --out {root}`")
    try:
        manifest = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as e:
        raise ManifestError(f"engines: {path} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    except (ValueError, RecursionError) as e:  # JSONDecodeError, an over-long integer, nesting too deep
        raise ManifestError(f"engines: {path} is not valid JSON ({str(e)[:200] or type(e).__name__})") from None
    except OSError as e:
        raise ManifestError(f"engines: {path} cannot be read ({e.strerror or e})") from None
    _check_manifest(manifest, str(path))
    return manifest


def manifest_family(manifest: dict) -> str:
    """The pipeline family of a manifest ``read_manifest`` returned: its ``family``, SD where it names none."""
    return manifest.get("family", SD)


def manifest_latent_space(manifest: dict) -> LatentSpace:
    """The latent space of a manifest ``read_manifest`` returned (checked there)."""
    return LatentSpace.from_dict(manifest["latent_space"])


def manifest_region(manifest: dict) -> RegionModel | None:
    """The region model of a manifest ``read_manifest`` returned (checked there); None where it records none."""
    return RegionModel.from_dict(manifest["region"]) if "region" in manifest else None


_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def _bad(where: str, key: str, expected: str, got) -> ManifestError:
    shown = repr(got)
    return ManifestError(f"engines: {where}: {key} must be {expected}, got {shown[:80] + '...' if len(shown) > 80 else shown}")


def _check_rel_path(where: str, key: str, rel) -> None:
    """A path inside the directory: relative, no '..', no NUL, no backslash (same meaning on every OS)."""
    if not isinstance(rel, str) or not rel:
        raise _bad(where, key, "a non-empty relative path", rel)
    parts = PurePosixPath(rel).parts
    if "\\" in rel or "\0" in rel or PurePosixPath(rel).is_absolute() or PureWindowsPath(rel).drive or ".." in parts:
        raise _bad(where, key, "a relative path inside the engines directory (no '..', not absolute)", rel)


def _check_spec(where: str, key: str, spec) -> None:
    if not isinstance(spec, dict):
        raise _bad(where, key, "a tensor spec object", spec)
    for k in ("name", "dtype"):
        if not isinstance(spec.get(k), str):
            raise _bad(where, f"{key}.{k}", "a string", spec.get(k))
    dims = spec.get("dims")
    if not isinstance(dims, list) or not all(isinstance(d, str) or type(d) is int and d >= 0 for d in dims):
        raise _bad(where, f"{key}.dims", "a list of symbolic names and non-negative integers", dims)
    for k in ("min", "opt", "max"):
        v = spec.get(k)
        if not isinstance(v, list) or len(v) != len(dims) or not all(type(x) is int and x >= 0 for x in v):
            raise _bad(where, f"{key}.{k}", f"a list of {len(dims)} non-negative integers (one per dim)", v)


def _check_dims(where: str, key: str, tensor, spec: dict, latents: LatentSpace) -> None:
    """The vocabulary's rank for this tensor (4, NCHW, for a name it does not know: refused later by
    ``component_specs``), and its latent channel dims equal to the latent space's."""
    ranks = tensor.ranks if tensor is not None else (4,)
    dims = spec["dims"]
    if len(dims) not in ranks:
        raise _bad(where, key, f"{' or '.join(map(str, ranks))} dims for {spec['name']!r}", dims)
    if tensor is None or len(dims) != len(tensor.dims):
        return
    for i, d in enumerate(tensor.dims):
        if isinstance(d, str) and split_dim(d)[1] == "latent_channels":
            want = split_dim(d)[0] * latents.channels
            if dims[i] != want:
                raise _bad(where, f"{key}[{i}]", f"{want} ({d} of latent_space.channels = {latents.channels})", dims[i])


def _check_manifest(manifest, where: str) -> None:
    if not isinstance(manifest, dict):
        raise _bad(where, "the manifest", "a JSON object", type(manifest).__name__)
    version = manifest.get("format_version")
    if type(version) is not int or version != FORMAT_VERSION:
        why = " (format 1 does not record the latent space): re-export the directory with `asymvq export`" \
            if type(version) is int and version < FORMAT_VERSION else ""
        raise ManifestError(f"engines: {where} has format_version {version!r}; this asymvq reads {FORMAT_VERSION}{why}")
    if not isinstance(manifest.get("precision"), str) or manifest["precision"] not in PRECISION_DTYPES:
        raise _bad(where, "precision", f"one of {list(PRECISION_DTYPES)}", manifest.get("precision"))
    try:
        latents = LatentSpace.from_dict(manifest.get("latent_space"))
    except ValueError as e:
        raise ManifestError(f"engines: {where}: {e}") from None
    if "region" in manifest:
        try:
            RegionModel.from_dict(manifest["region"])
        except ValueError as e:
            raise ManifestError(f"engines: {where}: {e}") from None
    source = manifest.get("source")
    if not isinstance(source, dict):
        raise _bad(where, "source", "an object", source)
    kinds = {"preset": str, "model": str, "decoder": str, "unet_in_channels": int, "seed": int}
    if not set(source) <= set(kinds) or "preset" not in source:  # Source's defaults fill the others
        raise _bad(where, "source", f"an object with preset and keys among {list(kinds)}", sorted(source))
    for k, v in source.items():
        ok = kinds[k]
        if not (v is None and ok is str or type(v) is ok):
            raise _bad(where, f"source.{k}", f"{'a string or null' if ok is str else 'an integer'}", v)
    for k in ("tokenizer", "tokenizer_2", "scheduler"):
        if k in manifest:
            _check_rel_path(where, k, manifest[k])
    family = manifest.get("family", SD)
    if not isinstance(family, str) or family not in FAMILIES:
        raise _bad(where, "family", f"one of {list(FAMILIES)}", family)
    comps = manifest.get("components")
    if not isinstance(comps, dict) or not comps:
        raise ManifestError(f"engines: {where} lists no components")
    foreign = [name for name in comps if name in COMPONENTS and name not in FAMILY_COMPONENTS[family]]
    if foreign:
        raise ManifestError(f"engines: {where} is a {family} directory but holds {foreign}, components of another "
                            f"family (a {family} pipeline runs {list(FAMILY_COMPONENTS[family])})")
    for name, entry in comps.items():
        if name not in COMPONENTS:
            raise ManifestError(f"engines: {where} has unknown component {name!r} (known: {list(COMPONENTS)})")
        if not isinstance(entry, dict) or not entry.get("inputs") or not entry.get("outputs") or not entry.get("artifacts"):
            raise ManifestError(f"engines: {name} in {where} lacks inputs, outputs or artifacts")
        if not isinstance(entry.get("weights_sha256"), str):
            raise _bad(where, f"{name}.weights_sha256", "a sha256 hex string", entry.get("weights_sha256"))
        for io in ("inputs", "outputs"):
            if not isinstance(entry[io], list):
                raise _bad(where, f"{name}.{io}", "a list of tensor specs", entry[io])
            for i, spec in enumerate(entry[io]):
                _check_spec(where, f"{name}.{io}[{i}]", spec)
                _check_dims(where, f"{name}.{io}[{i}].dims", VOCABULARY[name].tensor(spec["name"]), spec, latents)
        if not isinstance(entry["artifacts"], dict):
            raise _bad(where, f"{name}.artifacts", "an object {format: artifact}", entry["artifacts"])
        for fmt, art in entry["artifacts"].items():
            key = f"{name}.artifacts.{fmt}"
            if not isinstance(art, dict) or not isinstance(art.get("files"), dict) or not art["files"]:
                raise _bad(where, key, "an object with path and files {path: sha256}", art)
            _check_rel_path(where, f"{key}.path", art.get("path"))
            for rel, digest in art["files"].items():
                _check_rel_path(where, f"{key}.files", rel)
                if not isinstance(digest, str) or not _HEX64.match(digest):
                    raise _bad(where, f"{key}.files[{rel!r}]", "a sha256 hex digest (64 lowercase hex digits)", digest)
            if art["path"] not in art["files"]:
                raise _bad(where, f"{key}.path", "one of the artifact's files", art["path"])
            if "device" in art and not isinstance(art["device"], str) or fmt == "aoti" and "device" not in art:
                raise _bad(where, f"{key}.device", "a device type string", art.get("device"))


def safe_path(root: str | Path, rel: str, what: str) -> Path:
    """``root / rel`` after following symlinks, refused when it leaves ``root`` (a link out of the directory)."""
    root = Path(root)
    try:
        real, top = (root / rel).resolve(), root.resolve()
    except (OSError, RuntimeError) as e:  # a symlink loop
        raise ManifestError(f"engines: {what} {root / rel} cannot be resolved ({e})") from None
    if not real.is_relative_to(top):
        raise ManifestError(f"engines: {what} {root / rel} leads out of {root} (to {real}); refusing to read it")
    return root / rel


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
        f = safe_path(root, rel, f"{component} {fmt} artifact")
        if not f.is_file():
            raise ManifestError(f"engines: {component} {fmt} artifact {f} is missing")
        try:
            actual = sha256_file(f)
        except OSError as e:
            raise ManifestError(f"engines: {component} {fmt} artifact {f} cannot be read ({e.strerror or e})") from None
        if actual != digest:
            raise ManifestError(
                f"engines: {component} {fmt} artifact {f} is corrupted or was replaced "
                f"(sha256 {actual[:12]}..., manifest says {digest[:12]}...); re-export it"
            )
    return root / art["path"]
