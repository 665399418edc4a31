"""Load an engines directory (``asymvq export``) as ``{component: Engine}``.

The manifest is checked first (I/O names, hashes of every artifact file); a corrupted,
swapped or incomplete directory is refused with a ``ManifestError`` before any engine is
built. The backend is chosen per directory: TensorRT plans on CUDA when present and
TensorRT imports, AOTInductor packages when there is no ONNX, ONNX Runtime otherwise;
``backend="torch"``/``"torch-compile"`` rebuild the modules from the recorded source and
check their weights' hash.
"""
from __future__ import annotations

from pathlib import Path

import torch

from asymvq.export.build import SCHEDULER_FILE
from asymvq.export.components import Source, TensorSpec, build_module, weights_sha256
from asymvq.export.manifest import ManifestError, read_manifest, verify_artifact

from .base import COMPONENT_IO, Engine

BACKENDS = ("onnxruntime", "tensorrt", "aoti", "torch", "torch-compile")


def _tensorrt_importable() -> bool:
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return False
    return True


def _pick_backend(manifest: dict, device: torch.device) -> str:
    entries = manifest["components"].values()
    if device.type == "cuda" and all("trt" in e["artifacts"] for e in entries) and _tensorrt_importable():
        return "tensorrt"
    # A directory exported with --format aoti alone has nothing ONNX Runtime could load.
    return "aoti" if all(set(e["artifacts"]) == {"aoti"} for e in entries) else "onnxruntime"


def _specs(name: str, entry: dict, root: Path) -> tuple[list[TensorSpec], list[TensorSpec]]:
    inputs = [TensorSpec.from_dict(s) for s in entry["inputs"]]
    outputs = [TensorSpec.from_dict(s) for s in entry["outputs"]]
    got = (tuple(s.name for s in inputs), tuple(s.name for s in outputs))
    if got != COMPONENT_IO[name]:
        raise ManifestError(f"engines: {name} in {root} has I/O {got[0]} -> {got[1]}, "
                            f"expected {COMPONENT_IO[name][0]} -> {COMPONENT_IO[name][1]}")
    return inputs, outputs


def _torch_engine(name: str, entry: dict, manifest: dict, device: torch.device, compile: bool) -> Engine:
    from .torch_engine import TorchEngine

    module = build_module(name, Source(**manifest["source"]))
    if weights_sha256(module) != entry["weights_sha256"]:
        raise ManifestError(f"engines: the {name} weights at the recorded source {manifest['source']} no longer "
                            "match the manifest's weights_sha256; re-export the directory")
    dtype = torch.float16 if manifest["precision"] == "fp16" else torch.float32
    return TorchEngine(name, module.to(device=device, dtype=dtype), compile=compile)


def load_engine_dir(path: str | Path, *, device: str | torch.device = "cpu", backend: str | None = None,
                    components: list[str] | None = None, **engine_options) -> dict[str, Engine]:
    """``{component: Engine}`` for every component of the directory (or of ``components``).

    ``backend``: one of BACKENDS, or None for TensorRT on CUDA when its plans are there,
    AOTInductor when the directory holds nothing else, and ONNX Runtime otherwise.
    ``engine_options`` go to the engine class (e.g. ``reuse_outputs``).
    """
    root = Path(path)
    manifest = read_manifest(root)
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device: 'cuda' was asked for but torch sees no CUDA device (use device='cpu')")
    backend = backend or _pick_backend(manifest, device)
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {list(BACKENDS)}, got {backend!r}")
    wanted = list(manifest["components"]) if components is None else list(components)
    engines: dict[str, Engine] = {}
    for name in wanted:
        if name not in manifest["components"]:
            raise ManifestError(f"engines: {root} has no {name!r} engine (it has {sorted(manifest['components'])})")
        entry = manifest["components"][name]
        inputs, outputs = _specs(name, entry, root)
        if backend == "onnxruntime":
            from .onnxruntime_engine import OnnxRuntimeEngine

            onnx_path = verify_artifact(root, name, entry, "onnx")
            engines[name] = OnnxRuntimeEngine(name, onnx_path, inputs, outputs, device=device, **engine_options)
        elif backend == "tensorrt":
            from .tensorrt_engine import TensorRTEngine

            plan = verify_artifact(root, name, entry, "trt")
            engines[name] = TensorRTEngine(name, plan, inputs, outputs, device=device, **engine_options)
        elif backend == "aoti":
            from .aoti_engine import AOTIEngine

            package = verify_artifact(root, name, entry, "aoti")
            built_for = entry["artifacts"]["aoti"]["device"]
            if device.type != built_for:  # the package holds kernels for one device type only
                raise ManifestError(f"engines: the {name} AOTInductor package in {root} was compiled for "
                                    f"{built_for}, not {device.type}; load it with device={built_for!r}")
            engines[name] = AOTIEngine(name, package, inputs, outputs, device=device, **engine_options)
        else:
            engines[name] = _torch_engine(name, entry, manifest, device, compile=backend == "torch-compile")
    return engines


def load_tokenizer(path: str | Path):
    """The CLIP tokenizer stored in ``path/tokenizer`` by ``asymvq export``."""
    from transformers import CLIPTokenizer

    manifest = read_manifest(path)
    if "tokenizer" not in manifest:
        raise ManifestError(f"engines: {path} has no tokenizer (exported without the SD components)")
    return CLIPTokenizer.from_pretrained(Path(path) / manifest["tokenizer"], local_files_only=True)


def load_scheduler_config(path: str | Path) -> dict:
    """The scheduler config stored in ``path/scheduler`` (any diffusers scheduler takes it)."""
    import json

    manifest = read_manifest(path)
    if "scheduler" not in manifest:
        raise ManifestError(f"engines: {path} has no scheduler (exported without the SD components)")
    return json.loads((Path(path) / manifest["scheduler"] / SCHEDULER_FILE).read_text())


def pipeline_parts(path: str | Path, *, device: str | torch.device = "cpu", backend: str | None = None,
                   **engine_options) -> dict:
    """Everything an inpainting pipeline needs from an engines directory, as plain values.

    ``spec`` holds the fields of ``asymvq.stages.PipelineSpec`` (the runtime builds it; the
    engines layer does not import the runtime).
    """
    manifest = read_manifest(path)
    engines = load_engine_dir(path, device=device, backend=backend, **engine_options)
    unet = manifest["components"].get("unet")
    if unet is None:
        raise ManifestError(f"engines: {path} has no 'unet' engine; export with --component all")
    sample, noise_pred = unet["inputs"][0], unet["outputs"][0]  # COMPONENT_IO order, checked on load
    spec = {
        "unet_in_channels": sample["opt"][1],
        "latent_channels": noise_pred["opt"][1],
        "sample_size": sample["opt"][2],
        "dtype": torch.float16 if manifest["precision"] == "fp16" else torch.float32,
        "device": torch.device(device),
    }
    return {"engines": engines, "tokenizer": load_tokenizer(path), "scheduler_config": load_scheduler_config(path),
            "spec": spec}
