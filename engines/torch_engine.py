"""The torch engine: a component module run eagerly or through torch.compile."""
from __future__ import annotations

import torch
from torch import nn

from .base import COMPONENT_IO


class TorchEngine:
    """Runs a component wrapper (``asymvq.models.components``) behind the ``Engine`` interface.

    ``compile=True`` wraps the module in ``torch.compile`` (the diffusers recipe); the
    first call then pays the compilation, which a profiler counts as warm-up.
    """

    backend = "torch"

    def __init__(self, component: str, module: nn.Module, *, compile: bool = False, compile_mode: str | None = None):
        if component not in COMPONENT_IO:
            raise ValueError(f"component must be one of {sorted(COMPONENT_IO)}, got {component!r}")
        self.component = component
        self.input_names, self.output_names = COMPONENT_IO[component]
        self.module = module.eval()
        self._run = torch.compile(self.module, mode=compile_mode, fullgraph=True) if compile else self.module
        if compile:
            self.backend = "torch-compile"

    @property
    def device(self) -> torch.device:
        p = next(self.module.parameters(), None)
        return p.device if p is not None else torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        p = next(self.module.parameters(), None)
        return p.dtype if p is not None else torch.float32

    def __call__(self, **feeds: torch.Tensor) -> dict[str, torch.Tensor]:
        missing = [n for n in self.input_names if n not in feeds]
        extra = [n for n in feeds if n not in self.input_names]
        if missing or extra:
            raise ValueError(
                f"{self.component} engine: expected inputs {list(self.input_names)}, "
                f"missing {missing}, unexpected {extra}"
            )
        with torch.inference_mode():
            out = self._run(*(feeds[n] for n in self.input_names))
        return {self.output_names[0]: out}
