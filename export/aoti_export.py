"""torch -> AOTInductor package (``.pt2``) for one component, with dynamic batch/height/width.

The program is the one the ONNX path traces: same wrapper module, same example shapes
(``prepare_trace``: the same ``torch.export`` dims and precision handling), so both formats
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

from asymvq.engines.contract import TensorSpec

from .trace import prepare_trace

log = logging.getLogger(__name__)


def export_aoti(module: nn.Module, inputs: list[TensorSpec], path: str | Path, *, precision: str = "fp32",
                multiple: int = 1) -> list[Path]:
    """Compile ``module`` into the AOTInductor package ``path``; returns the files written."""
    path = Path(path)
    module, args, axes = prepare_trace(module, inputs, precision, multiple)
    program = torch.export.export(module, args, dynamic_shapes=axes)  # positional: any forward arg names
    path.unlink(missing_ok=True)  # a failed compile must not leave the previous package looking current
    written = torch._inductor.aoti_compile_and_package(program, package_path=str(path))
    log.info("compiled %s (%s, AOTInductor)", written, precision)
    return [Path(written)]
