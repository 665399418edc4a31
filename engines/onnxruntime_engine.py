"""The ONNX Runtime engine: one InferenceSession, CPU or CUDA execution provider, IO binding.

Inputs are bound straight from the torch tensors' memory and outputs are written by ORT
into torch tensors allocated here (zero copies either way); their shapes are learnt on the
first run of each input-shape signature. With ``reuse_outputs=True`` the same output
buffers are handed back on every call of that signature (no allocation at all): the
caller must then consume an output before the next call.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from .contract import TensorSpec
from .feeds import ExportedEngine

_NUMPY = {torch.float32: np.float32, torch.float16: np.float16, torch.int64: np.int64, torch.int32: np.int32}


def providers_for(device: torch.device) -> list:
    if device.type == "cpu":
        return ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        raise ValueError(
            "device: 'cuda' needs onnxruntime-gpu (CUDAExecutionProvider); this onnxruntime has "
            f"{ort.get_available_providers()}"
        )
    stream = torch.cuda.current_stream(device).cuda_stream
    # ORT runs on torch's current stream, so no extra synchronisation is needed between them.
    opts = {"device_id": device.index or 0, "has_user_compute_stream": "1", "user_compute_stream": str(stream)}
    return [("CUDAExecutionProvider", opts), "CPUExecutionProvider"]


class OnnxRuntimeEngine(ExportedEngine):
    """``engine(**feeds) -> {name: tensor}`` over an ONNX file (see ``asymvq.engines.Engine``)."""

    backend = "onnxruntime"

    def __init__(self, component: str, path: str | Path, inputs: list[TensorSpec], outputs: list[TensorSpec], *,
                 device: str | torch.device = "cpu", reuse_outputs: bool = False, threads: int | None = None):
        super().__init__(component, inputs, outputs, device)
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            opts.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(path), sess_options=opts, providers=providers_for(self.device))
        got_in = tuple(i.name for i in self.session.get_inputs())
        got_out = tuple(o.name for o in self.session.get_outputs())
        if (got_in, got_out) != (self.input_names, self.output_names):
            raise ValueError(f"{component}: {path} has I/O {got_in} -> {got_out}, "
                             f"expected {self.input_names} -> {self.output_names}")
        self.reuse_outputs = reuse_outputs
        self._out_shapes: dict[tuple, list[tuple[int, ...]]] = {}
        self._out_buffers: dict[tuple, list[torch.Tensor]] = {}

    def _bind_output(self, binding, name: str, t: torch.Tensor) -> None:
        binding.bind_output(name, self.device.type, self.device.index or 0, _NUMPY[t.dtype], tuple(t.shape),
                            t.data_ptr())

    def __call__(self, **feeds: torch.Tensor) -> dict[str, torch.Tensor]:
        feeds = self.conform(feeds, bound=False)  # the graph runs at any batch, height and width
        binding = self.session.io_binding()
        for name, t in feeds.items():
            binding.bind_input(name, self.device.type, self.device.index or 0, _NUMPY[t.dtype], tuple(t.shape),
                               t.data_ptr())
        key = tuple(tuple(t.shape) for t in feeds.values())
        shapes = self._out_shapes.get(key)
        if shapes is None:  # first run of this signature: let ORT allocate, learn the shapes
            for name in self.output_names:
                binding.bind_output(name, self.device.type, self.device.index or 0)
            self.session.run_with_iobinding(binding)
            values = [torch.tensor(v.numpy(), device=self.device) for v in binding.get_outputs()]  # a copy
            self._out_shapes[key] = [tuple(v.shape) for v in values]
            return dict(zip(self.output_names, values))
        buffers = self._out_buffers.get(key) if self.reuse_outputs else None
        if buffers is None:
            buffers = [torch.empty(s, dtype=getattr(torch, o.dtype), device=self.device)
                       for s, o in zip(shapes, self.outputs)]
            if self.reuse_outputs:
                self._out_buffers[key] = buffers
        for name, buf in zip(self.output_names, buffers):
            self._bind_output(binding, name, buf)
        self.session.run_with_iobinding(binding)
        return dict(zip(self.output_names, buffers))
