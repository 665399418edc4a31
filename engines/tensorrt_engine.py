"""The TensorRT engine: plans built from the exported ONNX, run on one CUDA stream.

Written against the TensorRT 10 Python API. TensorRT cannot be installed on the machines
this project is developed and tested on, so this file has not been executed here; its
tests skip wherever ``import tensorrt`` fails (see docs/engines.md).

Build: ONNX parser into an explicit-batch network (strongly typed for fp16 exports, so the
fp32 GroupNorms of ``asymvq.export.precision`` stay fp32; ``BuilderFlag.FP16`` lets TensorRT
pick fp16 kernels in an fp32 export), one optimization profile with each input's
min/opt/max from the manifest, a timing cache shared by all builds in the directory, and
``BuilderFlag.REFIT`` on request (swap weights without a rebuild).
Run: ``set_input_shape`` / ``set_tensor_address`` / ``execute_async_v3`` on torch's current
stream into torch output tensors; with static shapes the enqueue can be captured once in a
CUDA graph and replayed.
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch

from asymvq.models.extras import missing_extra

from .contract import TensorSpec
from .feeds import ExportedEngine
from .manifest import artifact_entry, read_manifest, replace_file, toolchain_versions, verify_artifact, write_manifest

log = logging.getLogger(__name__)
TIMING_CACHE = "timing.cache"


def _trt():
    try:
        import tensorrt as trt  # defers the tensorrt extra: imported only when a plan is built or run
    except ImportError as e:
        raise missing_extra("tensorrt", "TensorRT engines (on a machine with an NVIDIA GPU)", e) from None
    return trt


def build_plan(onnx_path: Path, plan_path: Path, inputs: list[TensorSpec], *, fp16: bool = False,
               strongly_typed: bool = False, refit: bool = False, timing_cache: Path | None = None,
               workspace_gb: float | None = None) -> Path:
    """Build and serialise a TensorRT plan for ``onnx_path`` with one min/opt/max profile."""
    trt = _trt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if strongly_typed else 0
    network = builder.create_network(flags)  # explicit batch is the only mode in TensorRT 10
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    if workspace_gb:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    if fp16 and not strongly_typed:
        config.set_flag(trt.BuilderFlag.FP16)
    if refit:
        config.set_flag(trt.BuilderFlag.REFIT)
    cache_bytes = timing_cache.read_bytes() if timing_cache is not None and timing_cache.is_file() else b""
    cache = config.create_timing_cache(cache_bytes)
    config.set_timing_cache(cache, ignore_mismatch=False)
    profile = builder.create_optimization_profile()
    for s in inputs:
        profile.set_shape(s.name, s.min, s.opt, s.max)
    config.add_optimization_profile(profile)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise RuntimeError(f"TensorRT failed to build a plan for {onnx_path} (see the log above)")
    replace_file(plan_path, bytes(plan))
    if timing_cache is not None:
        replace_file(timing_cache, bytes(config.get_timing_cache().serialize()))
    return plan_path


def build_plans(root: str | Path, *, components: list[str] | None = None, fp16: bool | None = None,
                refit: bool = False, workspace_gb: float | None = None) -> dict:
    """Add a TensorRT plan next to each ONNX file of an engines directory; updates the manifest."""
    trt = _trt()
    root = Path(root)
    manifest = read_manifest(root)
    precision = manifest["precision"]
    fp16 = precision == "fp16" if fp16 is None else fp16
    for name, entry in manifest["components"].items():
        if components is not None and name not in components:
            continue
        onnx_path = verify_artifact(root, name, entry, "onnx")
        inputs = [TensorSpec.from_dict(s) for s in entry["inputs"]]
        if entry["artifacts"].pop("trt", None) is not None:
            # The old plan leaves the manifest before its file is replaced: a kill mid-build then leaves a
            # directory without this plan (its ONNX still loads), never a manifest hashing a file that changed.
            write_manifest(root, manifest)
        plan = build_plan(onnx_path, root / f"{name}.plan", inputs, fp16=fp16, strongly_typed=precision == "fp16",
                          refit=refit, timing_cache=root / TIMING_CACHE, workspace_gb=workspace_gb)
        entry["artifacts"]["trt"] = artifact_entry(
            root, [plan], fp16=fp16, refit=refit, tensorrt=trt.__version__,
            gpu=torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        )
        write_manifest(root, manifest)
    manifest["toolchain"] = toolchain_versions()
    write_manifest(root, manifest)
    return manifest


class TensorRTEngine(ExportedEngine):
    """``engine(**feeds) -> {name: tensor}`` over a TensorRT plan (see ``asymvq.engines.Engine``).

    ``cuda_graph=True`` (static shapes only: min == max for every input) captures the
    enqueue once and replays it; outputs are then copied out of the graph's buffers unless
    ``reuse_outputs=True``.
    """

    backend = "tensorrt"
    bound_ranges = True  # the optimization profile binds

    def __init__(self, component: str, plan_path: str | Path, inputs: list[TensorSpec], outputs: list[TensorSpec], *,
                 device: str | torch.device = "cuda", cuda_graph: bool = False, reuse_outputs: bool = False):
        trt = _trt()
        super().__init__(component, inputs, outputs, device)
        if self.device.type != "cuda":
            raise ValueError(f"device: TensorRT engines run on 'cuda', got {str(device)!r}")
        self._logger = trt.Logger(trt.Logger.WARNING)
        self.engine = trt.Runtime(self._logger).deserialize_cuda_engine(Path(plan_path).read_bytes())
        if self.engine is None:
            raise ValueError(f"{component}: {plan_path} is not a TensorRT plan for this GPU/TensorRT version; rebuild it")
        self.context = self.engine.create_execution_context()
        dtypes = _torch_dtypes(trt)
        self._torch_dtype = {name: dtypes[self.engine.get_tensor_dtype(name)]
                             for name in self.input_names + self.output_names}
        static = all(s.min == s.max for s in inputs)
        if cuda_graph and not static:
            raise ValueError(f"{component}: cuda_graph needs static shapes (min == max), got dynamic profiles")
        self.cuda_graph, self.reuse_outputs = cuda_graph, reuse_outputs
        self._graph = None
        self._static_in: dict[str, torch.Tensor] = {}
        self._static_out: dict[str, torch.Tensor] = {}
        self._reused: dict[tuple, dict[str, torch.Tensor]] = {}  # input shapes -> output buffers

    def _bind(self, feeds: dict[str, torch.Tensor], outputs: dict[str, torch.Tensor] | None = None) -> dict:
        for name, t in feeds.items():
            self.context.set_input_shape(name, tuple(t.shape))
            self.context.set_tensor_address(name, t.data_ptr())
        if outputs is None:
            outputs = {name: torch.empty(tuple(self.context.get_tensor_shape(name)), dtype=self._torch_dtype[name],
                                         device=self.device) for name in self.output_names}
        for name, t in outputs.items():
            self.context.set_tensor_address(name, t.data_ptr())
        return outputs

    def __call__(self, **feeds: torch.Tensor) -> dict[str, torch.Tensor]:
        feeds = self.conform(feeds, self._torch_dtype, bound=self.bound_ranges)  # the optimization profile binds
        stream = torch.cuda.current_stream(self.device)
        if not self.cuda_graph:
            key = tuple(tuple(t.shape) for t in feeds.values())
            outputs = self._bind(feeds, self._reused.get(key) if self.reuse_outputs else None)
            if self.reuse_outputs:
                self._reused[key] = outputs
            if not self.context.execute_async_v3(stream.cuda_stream):
                raise RuntimeError(f"{self.component}: TensorRT execution failed")
            return outputs
        if self._graph is None:
            self._capture(feeds)
        for name, t in feeds.items():
            self._static_in[name].copy_(t)
        self._graph.replay()
        return dict(self._static_out) if self.reuse_outputs else {k: v.clone() for k, v in self._static_out.items()}

    def _capture(self, feeds: dict[str, torch.Tensor]) -> None:
        self._static_in = {name: t.clone() for name, t in feeds.items()}
        self._static_out = self._bind(self._static_in)
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):  # the first enqueue allocates; it must not be captured
            self.context.execute_async_v3(side.cuda_stream)
        torch.cuda.current_stream(self.device).wait_stream(side)
        self._graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self._graph, stream=side):
            self.context.execute_async_v3(side.cuda_stream)


def _torch_dtypes(trt) -> dict:
    return {trt.float32: torch.float32, trt.float16: torch.float16, trt.bfloat16: torch.bfloat16,
            trt.int64: torch.int64, trt.int32: torch.int32, trt.int8: torch.int8, trt.bool: torch.bool}

