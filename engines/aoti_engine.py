"""The AOTInductor engine: a ``.pt2`` package compiled ahead of time by ``asymvq export --format aoti``.

Loading maps the package's shared library (no tracing, no compilation); a call runs the
compiled kernels on the conformed feeds and returns freshly allocated torch tensors.
"""
from __future__ import annotations

from pathlib import Path

import torch

from .contract import TensorSpec, split_dim
from .feeds import conform_feeds, init_engine_io


class AOTIEngine:
    """``engine(**feeds) -> {name: tensor}`` over an AOTInductor package (see ``asymvq.engines.Engine``)."""

    backend = "aoti"

    def __init__(self, component: str, path: str | Path, inputs: list[TensorSpec], outputs: list[TensorSpec], *,
                 device: str | torch.device = "cpu"):
        init_engine_io(self, component, inputs, outputs, device)
        self.runner = torch._inductor.aoti_load_package(str(path))

    def _check_tied_dims(self, feeds: dict[str, torch.Tensor]) -> None:
        """Refuse feeds whose derived dims disagree (image not 8x the latent).

        An ONNX graph refuses them by its shapes; compiled AOTInductor code checks its inputs
        only when AOTI_RUNTIME_CHECK_INPUTS is set in the environment and otherwise indexes
        every input with the latent's sizes (a 56x56 or 72x72 image with an 8x8 latent ran
        without error here): a wrong picture, or a read past the end of a smaller image.
        """
        seen: dict[str, tuple[str, str, int]] = {}  # base dim -> (input, dim, size) where first met
        for name, t in feeds.items():
            for d, n in zip(self.inputs[name].dims, t.shape):
                if not isinstance(d, str):
                    continue
                k, base = split_dim(d)
                ref_name, ref_d, ref_n = seen.setdefault(base, (name, d, n))
                if n % k or n * split_dim(ref_d)[0] != ref_n * k:
                    raise ValueError(f"{self.component} engine: {name} has {d} = {n}, which does not fit "
                                     f"{ref_name}'s {ref_d} = {ref_n}")

    def __call__(self, **feeds: torch.Tensor) -> dict[str, torch.Tensor]:
        feeds = conform_feeds(self.component, self.inputs, feeds, self.device)
        self._check_tied_dims(feeds)
        with torch.inference_mode():
            out = self.runner(*feeds.values())  # conform_feeds returns them in input order
        outs = (out,) if isinstance(out, torch.Tensor) else tuple(out)
        return dict(zip(self.output_names, outs))
