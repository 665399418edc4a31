"""Load an engines directory (``asymvq export``) as ``{component: Engine}``, plus its tokenizer and scheduler config.

The manifest is checked first (I/O names, hashes of every artifact file); a corrupted,
swapped or incomplete directory is refused with a ``ManifestError`` before any engine is
built. The backend is chosen per directory: TensorRT plans on CUDA when present and
TensorRT imports, OpenVINO IRs on the CPU when openvino imports, AOTInductor packages when there
is no ONNX, ONNX Runtime otherwise;
``backend="torch"``/``"torch-compile"`` rebuild the modules from the recorded source and
check their weights' hash. Each format's engine module is imported only when it is used,
so a base install (no extras) loads torch directories and names the extra for the others.
"""
from __future__ import annotations

import importlib
import json
from pathlib import Path

import torch

from asymvq.models.devices import parse_device
from asymvq.models.extras import missing_extra
from asymvq.models.sd_networks import SCHEDULER_FILE
from asymvq.models.sources import Source, build_module

from .aoti_engine import AOTIEngine
from .contract import Engine, precision_dtype
from .manifest import ManifestError, component_specs, read_manifest, safe_path, verify_artifact, weights_sha256
from .torch_engine import TorchEngine

BACKENDS = ("onnxruntime", "openvino", "tensorrt", "aoti", "torch", "torch-compile")
# The top-level modules whose absence means that extra is not installed.
EXTRA_MODULES = {"onnxruntime": ("onnxruntime",), "openvino": ("openvino",), "tensorrt": ("tensorrt",)}
# The extra each exported format needs at load time.
BACKEND_EXTRAS = {"onnxruntime": "onnx", "openvino": "openvino", "tensorrt": "tensorrt"}
# The manifest's artifact key each exported format's backend loads.
# The tokenizers an engines directory may hold (SD's and SDXL's CLIP, FLUX's T5): the class a folder's
# tokenizer_config.json names -> the class that loads it. A T5TokenizerFast saves itself as "T5Tokenizer"
# (the slow class, which needs sentencepiece); its tokenizer.json is what the fast one reads.
TOKENIZER_CLASSES = {"CLIPTokenizer": "CLIPTokenizer", "CLIPTokenizerFast": "CLIPTokenizerFast",
                     "T5Tokenizer": "T5TokenizerFast", "T5TokenizerFast": "T5TokenizerFast"}
BACKEND_FORMATS = {"onnxruntime": "onnx", "openvino": "openvino", "tensorrt": "trt", "aoti": "aoti"}


def _importable(module: str) -> bool:
    """Whether an optional toolchain imports (probed only where it would be picked)."""
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


def _pick_backend(manifest: dict, device: torch.device) -> str:
    entries = manifest["components"].values()
    if device.type == "cuda" and all("trt" in e["artifacts"] for e in entries) and _importable("tensorrt"):
        return "tensorrt"
    # A directory exported with --format aoti (or openvino) alone has nothing ONNX Runtime could load.
    if all(set(e["artifacts"]) == {"aoti"} for e in entries):
        return "aoti"
    has_ir = all("openvino" in e["artifacts"] for e in entries)
    if has_ir and (device.type == "cpu" and _importable("openvino") or all("onnx" not in e["artifacts"] for e in entries)):
        return "openvino"  # the faster CPU path where its IR is there (docs/engines.md)
    return "onnxruntime"


def _engine_class(backend: str):
    """The engine class of an exported format, imported on first use (it may need an extra)."""
    try:
        if backend == "onnxruntime":
            from .onnxruntime_engine import OnnxRuntimeEngine  # defers the onnx extra

            return OnnxRuntimeEngine
        if backend == "openvino":
            from .openvino_engine import OpenVINOEngine  # defers the openvino extra

            return OpenVINOEngine
        if backend == "tensorrt":
            from .tensorrt_engine import TensorRTEngine  # defers the tensorrt extra

            return TensorRTEngine
        return AOTIEngine
    except ImportError as e:
        if (e.name or "").split(".")[0] not in EXTRA_MODULES.get(backend, ()):
            raise  # a bug of ours, not a missing extra: say what it is
        raise missing_extra(BACKEND_EXTRAS[backend], f"backend={backend!r}", e) from None


def _torch_engine(name: str, entry: dict, manifest: dict, device: torch.device, compile: bool) -> Engine:
    module = build_module(name, Source(**manifest["source"]))
    if weights_sha256(module) != entry["weights_sha256"]:
        raise ManifestError(f"engines: the {name} weights at the recorded source {manifest['source']} no longer "
                            "match the manifest's weights_sha256; re-export the directory")
    dtype = precision_dtype(manifest["precision"])
    return TorchEngine(name, module.to(device=device, dtype=dtype), compile=compile)


def _manifest(path, manifest: dict | None) -> dict:
    """The directory's manifest: ``manifest`` when the caller read it already (``read_manifest``), else read now."""
    return read_manifest(path) if manifest is None else manifest


def load_engine_dir(path: str | Path, *, device: str | torch.device = "cpu", backend: str | None = None,
                    components: list[str] | None = None, manifest: dict | None = None,
                    **engine_options) -> dict[str, Engine]:
    """``{component: Engine}`` for every component of the directory (or of ``components``).

    ``backend``: one of BACKENDS, or None for TensorRT on CUDA when its plans are there,
    OpenVINO on the CPU when every component has an IR, AOTInductor when the directory holds nothing
    else, and ONNX Runtime otherwise.
    ``manifest``: what ``read_manifest(path)`` returned, when the caller has it (read once per load).
    ``engine_options`` go to the engine class (e.g. ``reuse_outputs``).
    """
    root = Path(path)
    manifest = _manifest(root, manifest)
    device = parse_device(device)
    backend = backend or _pick_backend(manifest, device)
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {list(BACKENDS)}, got {backend!r}")
    wanted = list(manifest["components"]) if components is None else list(components)
    engines: dict[str, Engine] = {}
    for name in wanted:
        if name not in manifest["components"]:
            raise ManifestError(f"engines: {root} has no {name!r} engine (it has {sorted(manifest['components'])})")
        entry = manifest["components"][name]
        inputs, outputs = component_specs(root, name, entry)
        if backend in ("torch", "torch-compile"):
            engines[name] = _torch_engine(name, entry, manifest, device, compile=backend == "torch-compile")
            continue
        fmt = BACKEND_FORMATS[backend]
        artifact = verify_artifact(root, name, entry, fmt)
        if fmt == "aoti":
            built_for = entry["artifacts"]["aoti"]["device"]
            if device.type != built_for:  # the package holds kernels for one device type only
                raise ManifestError(f"engines: the {name} AOTInductor package in {root} was compiled for "
                                    f"{built_for}, not {device.type}; load it with device={built_for!r}")
        engines[name] = _engine_class(backend)(name, artifact, inputs, outputs, device=device, **engine_options)
    return engines


def load_tokenizer(path: str | Path, *, manifest: dict | None = None, key: str = "tokenizer"):
    """The tokenizer stored in ``path/<key>`` by ``asymvq export`` (``key``: tokenizer, or tokenizer_2 of SDXL and
    FLUX.1 Fill; ``manifest`` as in ``load_engine_dir``), of the class it was saved as (CLIP's, or FLUX's T5)."""
    import transformers

    manifest = _manifest(path, manifest)
    if key not in manifest:
        raise ManifestError(f"engines: {path} has no {key} (exported without the text encoders)")
    folder = safe_path(path, manifest[key], key)
    try:
        name = json.loads((folder / "tokenizer_config.json").read_text()).get("tokenizer_class", "CLIPTokenizer")
    except (OSError, ValueError) as e:
        raise ManifestError(f"engines: {folder}/tokenizer_config.json cannot be read as JSON ({e})") from None
    if name not in TOKENIZER_CLASSES:
        raise ManifestError(f"engines: {folder} holds a {name!r}, expected one of {list(TOKENIZER_CLASSES)}")
    return getattr(transformers, TOKENIZER_CLASSES[name]).from_pretrained(folder, local_files_only=True)


def load_scheduler_config(path: str | Path, *, manifest: dict | None = None) -> dict:
    """The scheduler config stored in ``path/scheduler`` (any diffusers scheduler takes it; ``manifest`` as in
    ``load_engine_dir``)."""
    manifest = _manifest(path, manifest)
    if "scheduler" not in manifest:
        raise ManifestError(f"engines: {path} has no scheduler (exported without the SD components)")
    config = safe_path(path, f"{manifest['scheduler']}/{SCHEDULER_FILE}", "scheduler config")
    try:
        return json.loads(config.read_text())
    except (OSError, ValueError) as e:
        raise ManifestError(f"engines: scheduler config {config} cannot be read as JSON ({e})") from None
