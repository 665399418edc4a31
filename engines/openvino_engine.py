"""The OpenVINO engine: an IR (``<component>.xml`` + ``.bin``, written by ``asymvq export --format
openvino``) compiled for the CPU with an inference-precision hint.

Precision: ``bf16`` where the CPU computes bf16 natively (avx512_bf16 or AMX: the flags in
/proc/cpuinfo, ``asymvq.models.cpu_features``, the rule of the torch path too; OpenVINO's
``OPTIMIZATION_CAPABILITIES`` where no flag can be read), ``fp32`` otherwise; ``precision=``
overrides it. This is a load-time choice, not the export's precision: one fp32 IR serves both.
bf16 keeps OpenVINO's own fp32 islands (normalisation statistics, softmax accumulation).

Compiled models are cached (OpenVINO's ``CACHE_DIR``): in ``DIR/.openvino-cache/<precision>`` next
to the IR when that is writable, in ``~/.cache/asymvq/openvino/<precision>`` otherwise, or under
``cache_dir=`` (``cache_dir=False`` turns caching off). A second load of the x1.5 decoder then imports the
compiled blob instead of compiling again (times in docs/engines.md).

Shapes: ``static_shapes=True`` reshapes the model to each new input signature and compiles it
for that signature (once per signature, cached like any other compile); ``False`` compiles one
dynamic model for the whole exported range. Which is faster is measured in docs/engines.md.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import openvino as ov
import torch

from asymvq.models.cpu_features import cpu_features

from .contract import TensorSpec
from .feeds import ExportedEngine

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "bf16")
_HINT = {"fp32": "f32", "bf16": "bf16"}
_CORE: ov.Core | None = None


def core() -> ov.Core:
    """One OpenVINO Core per process (it owns the plugins and their thread pools)."""
    global _CORE
    if _CORE is None:
        _CORE = ov.Core()
    return _CORE


def cpu_flags() -> set[str]:
    """This CPU's /proc/cpuinfo flags (``asymvq.models.cpu_features``)."""
    return set(cpu_features().flags)


def native_bf16() -> bool:
    """True where the CPU has bf16 arithmetic (avx512_bf16 or AMX): by /proc/cpuinfo, the same rule as the
    torch path (``asymvq.models.cpu_features``); OpenVINO's own capabilities only where no flag is known."""
    cpu = cpu_features()
    if cpu.flags:
        return cpu.native_bf16
    try:
        return "BF16" in core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    except RuntimeError:
        return False


def default_precision() -> str:
    return "bf16" if native_bf16() else "fp32"


def default_cache_dir(root: Path) -> Path:
    """``root/.openvino-cache`` when the engines directory is writable, else a per-user directory."""
    local = root / ".openvino-cache"
    if os.access(root, os.W_OK):
        return local
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "asymvq" / "openvino"


class OpenVINOEngine(ExportedEngine):
    """``engine(**feeds) -> {name: tensor}`` over an OpenVINO IR (see ``asymvq.engines.Engine``)."""

    backend = "openvino"

    def __init__(self, component: str, path: str | Path, inputs: list[TensorSpec], outputs: list[TensorSpec], *,
                 device: str | torch.device = "cpu", precision: str | None = None,
                 cache_dir: str | Path | bool | None = None, threads: int | None = None,
                 static_shapes: bool = False):
        super().__init__(component, inputs, outputs, device)
        if self.device.type != "cpu":
            raise ValueError(f"device: the OpenVINO engine runs on the CPU here, got {self.device}; "
                             "use backend='onnxruntime' or 'tensorrt' on CUDA")
        if precision is None:
            precision = default_precision()
        if precision not in PRECISIONS:
            raise ValueError(f"precision: expected one of {list(PRECISIONS)} (OpenVINO's inference precision), "
                             f"got {precision!r}")
        if precision == "bf16" and not native_bf16():
            log.warning("%s: bf16 asked for on a CPU without native bf16 (no avx512_bf16/AMX): OpenVINO "
                        "emulates or falls back to fp32, expect it slower than fp32", component)
        if cpu_features().isa_cap:
            log.warning("%s: ONEDNN_MAX_CPU_ISA=%s is set: OpenVINO's CPU plugin reads the CPU's own features beside "
                        "the capped oneDNN, so some nodes may find no implementation or crash (asymvq.models."
                        "cpu_features); unset it to run OpenVINO", component, cpu_features().isa_cap)
        self.path = Path(path)
        self.precision = precision
        self.static_shapes = static_shapes
        self.config: dict[str, str] = {"INFERENCE_PRECISION_HINT": _HINT[precision], "PERFORMANCE_HINT": "LATENCY"}
        if threads:
            self.config["INFERENCE_NUM_THREADS"] = str(threads)
        if cache_dir is not False:
            cache = default_cache_dir(self.path.parent) if cache_dir in (None, True) else Path(cache_dir)
            # One folder per precision: with one shared folder, the tiny UNet compiled in bf16 after its fp32
            # compile was cached there gave NaN here (OpenVINO 2026.4.1); separate folders gave none.
            cache = cache / precision
            cache.mkdir(parents=True, exist_ok=True)
            self.config["CACHE_DIR"] = str(cache)
        self.model = core().read_model(str(self.path))
        # A port may carry several tensor names (the FLUX transformer's timestep also names the multiply
        # the converter folded into it); the contract's name must be among them, in the contract's order.
        ports = (self.model.inputs, self.model.outputs)
        names = (self.input_names, self.output_names)
        if any(len(ps) != len(ns) or any(n not in p.get_names() for p, n in zip(ps, ns)) for ps, ns in zip(ports, names)):
            got_in = tuple(p.get_any_name() for p in self.model.inputs)
            got_out = tuple(p.get_any_name() for p in self.model.outputs)
            raise ValueError(f"{component}: {path} has I/O {got_in} -> {got_out}, "
                             f"expected {self.input_names} -> {self.output_names}")
        self._compiled: dict[tuple, ov.CompiledModel] = {}
        self._requests: dict[tuple, ov.InferRequest] = {}
        if not static_shapes:
            self._compile(None)

    def _compile(self, key: tuple | None) -> ov.InferRequest:
        if key is None:
            compiled = core().compile_model(self.model, "CPU", self.config)
        else:
            model = self.model.clone()
            model.reshape({name: ov.PartialShape(list(shape)) for name, shape in zip(self.input_names, key)})
            compiled = core().compile_model(model, "CPU", self.config)
        self._compiled[key] = compiled
        self._requests[key] = request = compiled.create_infer_request()
        return request

    def __call__(self, **feeds: torch.Tensor) -> dict[str, torch.Tensor]:
        feeds = self.conform(feeds, bound=False, tied=True)  # the graph runs at any batch, height and width
        key = tuple(tuple(t.shape) for t in feeds.values()) if self.static_shapes else None
        request = self._requests.get(key) or self._compile(key)
        # Inputs are shared with OpenVINO (no copy); outputs are copied out of the request's buffers,
        # which the next call overwrites.
        out = request.infer({name: t.numpy() for name, t in feeds.items()}, share_inputs=True)
        return {name: torch.from_numpy(out[i]) for i, name in enumerate(self.output_names)}
