"""ONNX -> OpenVINO IR (``<component>.xml`` + ``<component>.bin``) for one component.

The IR is converted from the ONNX file the ONNX path exported (same graph, same dynamic
batch/height/width, same I/O names), so every format accepts the ranges in the manifest.
Weights keep the export's precision: an fp32 export gives an fp32 IR (``compress_to_fp16``
off, so OpenVINO fp32 matches torch fp32 within 1e-4), an fp16 export an fp16 IR. The
precision the CPU computes in (fp32 or bf16) is chosen when the IR is compiled, at load.

Why an IR and not the ONNX compiled at load: reading the IR skips the ONNX frontend's
conversion (measured on the x1.5 decoder in docs/engines.md), and the IR is what OpenVINO's
own tools read.
"""
from __future__ import annotations

import logging
from pathlib import Path

import openvino as ov

log = logging.getLogger(__name__)

OPENVINO_VERSION = ov.__version__.split("-")[0]  # "2026.4.1-22982-..." -> "2026.4.1"


def export_openvino(onnx_path: str | Path, path: str | Path, *, precision: str = "fp32") -> list[Path]:
    """Convert ``onnx_path`` (with its external data, if any) to the IR ``path`` (.xml); returns the files written."""
    path = Path(path)
    if path.suffix != ".xml":
        raise ValueError(f"openvino: the IR path must end in .xml, got {path}")
    weights = path.with_suffix(".bin")
    for stale in (path, weights):
        stale.unlink(missing_ok=True)  # a failed conversion must not leave the previous IR looking current
    model = ov.convert_model(str(onnx_path))
    ov.save_model(model, str(path), compress_to_fp16=precision == "fp16")
    log.info("converted %s to %s (%s weights)", Path(onnx_path).name, path.name, precision)
    return [path, weights]
