"""torch -> AOTInductor package (``.pt2``) for one component, with dynamic batch/height/width.

The program is the one the ONNX path traces: same wrapper module, same example shapes
(``example_specs``) and the same ``torch.export`` dims (``dynamic_shapes``), so both formats
accept exactly the ranges recorded in the manifest. ``aoti_compile_and_package`` then
compiles it ahead of time into a shared library inside the package; loading needs torch but
no Python tracing or compilation. The package is compiled for the device the module and
example inputs are on (here always the CPU: ``build_module`` builds there) and runs only there.
Compilation dominates: 55-70 s for the tiny decoder on 2 CPU cores with an empty inductor cache.
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from .components import TensorSpec, example_inputs
from .onnx_export import dynamic_shapes, example_specs
from .precision import to_fp16

log = logging.getLogger(__name__)


def export_aoti(module: nn.Module, inputs: list[TensorSpec], path: str | Path, *, precision: str = "fp32",
                multiple: int = 1) -> list[Path]:
    """Compile ``module`` into the AOTInductor package ``path``; returns the files written."""
    if precision not in ("fp32", "fp16"):
        raise ValueError(f"precision must be 'fp32' or 'fp16', got {precision!r}")
    path = Path(path)
    module = to_fp16(module) if precision == "fp16" else module.float()
    example = example_inputs(example_specs(inputs), "opt")
    axes = dynamic_shapes(inputs, multiple)
    program = torch.export.export(
        module.eval(),
        tuple(example[s.name] for s in inputs),
        dynamic_shapes=tuple(axes[s.name] for s in inputs),  # positional: any forward arg names
    )
    path.unlink(missing_ok=True)  # a failed compile must not leave the previous package looking current
    written = torch._inductor.aoti_compile_and_package(program, package_path=str(path))
    log.info("compiled %s (%s, AOTInductor)", written, precision)
    return [Path(written)]
