"""Device and dtype names as users write them ("cpu", "cuda:1", "fp16", "auto"), checked once for every layer.

``auto`` is the product's default (the CLI, the servers, ``PipelineSource``, ``asymvq profile``): the
fastest precision this hardware computes natively. On the CPU that is bf16 where the CPU has
``avx512_bf16`` or AMX and fp32 elsewhere (``asymvq.models.cpu_features``, the rule OpenVINO's default
follows too); on CUDA fp16, the precision the published GPU anchors are measured in. The Python
constructors (``InpaintPipeline.from_preset`` ...) keep fp32 by default, as diffusers does: a library call
is exact against the reference unless it asks otherwise.
"""
from __future__ import annotations

import torch

from .cpu_features import cpu_features, default_cpu_dtype

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
AUTO = "auto"
DTYPE_CHOICES = (AUTO, *DTYPES)
DTYPE_HELP = ("auto (default: bf16 on a CPU with avx512_bf16 or AMX, fp32 on other CPUs, fp16 on CUDA), "
              "fp32, fp16 or bf16.")


def parse_dtype(dtype, device="cpu") -> torch.dtype:
    """``dtype`` as a torch dtype; ``"auto"`` resolved for ``device`` (a name or torch.device; see the module doc)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == AUTO:
        return auto_dtype(device)
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {list(DTYPE_CHOICES)}, got {dtype!r}")
    return DTYPES[dtype]


def _is_cuda(device) -> bool:
    """``device`` (a name or torch.device) is a CUDA one; not checked, so "auto" resolves before a device is."""
    return (device.type if isinstance(device, torch.device) else str(device).split(":")[0]) == "cuda"


def auto_dtype(device="cpu") -> torch.dtype:
    """What ``"auto"`` means on ``device``: fp16 on CUDA, ``default_cpu_dtype()`` on the CPU."""
    return torch.float16 if _is_cuda(device) else default_cpu_dtype()


def resolve_dtype_name(dtype, device="cpu") -> str:
    """``dtype`` as one of DTYPES' names, ``"auto"`` resolved for ``device`` (what a front end keeps and reports)."""
    return dtype_name(parse_dtype(dtype, device))


def dtype_reason(dtype, device="cpu") -> str:
    """One line for a profile or a log: ``bf16 (auto: Intel Xeon ...: avx2 avx512f avx512_bf16 ... -> bf16)``."""
    name = resolve_dtype_name(dtype, device)
    if dtype != AUTO:
        return f"{name} (asked)"
    return f"{name} (auto: {'CUDA' if _is_cuda(device) else cpu_features().describe()})"


def dtype_name(dtype: torch.dtype) -> str:
    """"fp32" for torch.float32, and so on; str(dtype) for anything else."""
    return {v: k for k, v in DTYPES.items()}.get(dtype, str(dtype))


def parse_device(device) -> torch.device:
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}") from None
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device: 'cuda' was asked for but torch sees no CUDA device (use --device cpu)")
    return dev
