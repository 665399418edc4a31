"""The AOTInductor engine: a ``.pt2`` package compiled ahead of time by ``asymvq export --format aoti``.

Loading maps the package's shared library (no tracing, no compilation); a call runs the
compiled kernels on the conformed feeds and returns freshly allocated torch tensors.
"""
from __future__ import annotations

from pathlib import Path

import torch

from .contract import TensorSpec
from .feeds import ExportedEngine


class AOTIEngine(ExportedEngine):
    """``engine(**feeds) -> {name: tensor}`` over an AOTInductor package (see ``asymvq.engines.Engine``)."""

    backend = "aoti"
    bound_ranges = True  # compiled for the exported dims only

    def __init__(self, component: str, path: str | Path, inputs: list[TensorSpec], outputs: list[TensorSpec], *,
                 device: str | torch.device = "cpu"):
        super().__init__(component, inputs, outputs, device)
        self.runner = torch._inductor.aoti_load_package(str(path))

    def __call__(self, **feeds: torch.Tensor) -> dict[str, torch.Tensor]:
        # the package is compiled for the exported dims only, and does not check tied dims
        feeds = self.conform(feeds, bound=self.bound_ranges, tied=True)
        with torch.inference_mode():
            out = self.runner(*feeds.values())  # conform_feeds returns them in input order
        outs = (out,) if isinstance(out, torch.Tensor) else tuple(out)
        return dict(zip(self.output_names, outs))
