"""What the kernel files share: the interpreter switch, argument checks, launch configs.

Triton decides between its compiler and its CPU interpreter when a kernel is *defined*
(``@triton.jit`` reads TRITON_INTERPRET at import), not when it runs. So this module records
the mode once, at import, and every launch checks that the tensors suit that mode: a process
that imported the kernels without TRITON_INTERPRET=1 and then hands them CPU tensors gets a
clear error instead of a driver crash.
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

_TRUE = ("1", "true", "on", "yes")

# Frozen at import on purpose: see the module docstring.
INTERPRET = os.environ.get("TRITON_INTERPRET", "0").strip().lower() in _TRUE

# Activation dtypes the kernels accept. bf16 compiles on a GPU but the interpreter's bf16
# tl.dot is wrong, so it is tested on a GPU only.
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def interpreting() -> bool:
    """True when this process defined the kernels for Triton's CPU interpreter."""
    return INTERPRET


def can_run() -> tuple[bool, str]:
    """(True, "") where the kernels can run here, else (False, why)."""
    if INTERPRET:
        return True, ""
    if torch.cuda.is_available():
        return True, ""
    if os.environ.get("TRITON_INTERPRET", "0").strip().lower() in _TRUE:
        return False, (
            "TRITON_INTERPRET=1 was set after asymvq.kernels was imported; Triton reads it when "
            "kernels are defined, so set it before the first import"
        )
    return False, "no CUDA device and TRITON_INTERPRET is not set"


def check_device(*tensors: torch.Tensor) -> None:
    devices = {t.device for t in tensors if t is not None}
    if len(devices) > 1:
        raise ValueError(f"all tensors must be on one device, got {sorted(map(str, devices))}")
    (device,) = devices
    if INTERPRET:
        if device.type != "cpu":
            raise RuntimeError(
                f"kernels were defined for the Triton interpreter (TRITON_INTERPRET=1) but got {device} "
                "tensors; unset TRITON_INTERPRET before importing asymvq.kernels to run on the GPU"
            )
    elif device.type != "cuda":
        raise RuntimeError(
            f"Triton kernels need CUDA tensors, got {device}; to run them on the CPU set "
            "TRITON_INTERPRET=1 before importing asymvq.kernels"
        )


def check_activation(name: str, t, shape: tuple | None = None, dtype: torch.dtype | None = None) -> None:
    """A 4-D float (B, C, H, W) tensor in channels-last memory (C innermost).

    ``shape`` entries that are None are not checked.
    """
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if t.ndim != 4:
        raise ValueError(f"{name}: expected a 4-D (B, C, H, W) tensor, got shape {tuple(t.shape)}")
    if shape is not None and any(e is not None and e != g for e, g in zip(shape, t.shape)):
        want = "(" + ", ".join("*" if e is None else str(e) for e in shape) + ")"
        raise ValueError(f"{name}: expected shape {want}, got {tuple(t.shape)}")
    if t.dtype not in FLOAT_DTYPES:
        raise ValueError(f"{name}: expected dtype float16, bfloat16 or float32, got {t.dtype}")
    if dtype is not None and t.dtype != dtype:
        raise ValueError(f"{name}: expected dtype {dtype} (the input's), got {t.dtype}")
    if not t.is_contiguous(memory_format=torch.channels_last):
        raise ValueError(
            f"{name}: expected channels-last memory (x.contiguous(memory_format=torch.channels_last)), "
            f"got strides {t.stride()}"
        )


def check_mask(name: str, m, batch: int, height: int, width: int) -> None:
    """A float (1 or B, 1, H, W) mask; any strides (a strided view is sampled by index)."""
    if not isinstance(m, torch.Tensor):
        raise ValueError(f"{name}: expected a torch.Tensor, got {type(m).__name__}")
    if m.ndim != 4 or m.shape[1] != 1 or m.shape[0] not in (1, batch) or tuple(m.shape[2:]) != (height, width):
        raise ValueError(f"{name}: expected shape (1 or {batch}, 1, {height}, {width}), got {tuple(m.shape)}")
    if not m.is_floating_point():
        raise ValueError(f"{name}: expected a float 0/1 mask, got dtype {m.dtype}")


def mask_strides(m: torch.Tensor) -> tuple[int, int, int]:
    """(batch, row, column) strides of a (1 or B, 1, H, W) mask; batch 1 broadcasts (stride 0)."""
    return (0 if m.shape[0] == 1 else m.stride(0)), m.stride(2), m.stride(3)


# Shared memory one block may use (opt-in maximum, bytes) per compute capability; what Triton's
# compile reports as ``shared`` must stay within it. Unlisted capabilities get the smallest.
SMEM_LIMIT = {80: 166_912, 86: 101_376, 87: 166_912, 89: 101_376, 90: 232_448, 100: 232_448, 120: 101_376}


def target_capability() -> int:
    """Compute capability (major*10 + minor) of the target the kernels compile for now.

    Asked of Triton's active driver, so the compile check's stand-in driver (no device) and a
    real GPU answer the same way.
    """
    from triton.runtime.driver import driver

    return driver.active.get_current_target().arch


def smem_limit(capability: int) -> int:
    return SMEM_LIMIT.get(capability, min(SMEM_LIMIT.values()))


@triton.jit
def pixel_offsets(b, y, x, s_n, s_h, s_w):
    """int64 element offsets of pixels (b, y, x): ``y * s_h`` alone passes 2**31 on one large
    image ((H-1)*W*C, e.g. 384 channels at 2368x2368), so every product is int64."""
    return b.to(tl.int64) * s_n + y.to(tl.int64) * s_h + x.to(tl.int64) * s_w


def configs(gpu: list[triton.Config], interpreter: triton.Config) -> list[triton.Config]:
    """Autotuning candidates: the GPU list, or the single interpreter config.

    Autotuning several configs needs a GPU to time them, and the interpreter is fastest with
    few, large programs.
    """
    return [interpreter] if INTERPRET else gpu


def dot_precision(dtype: torch.dtype) -> str:
    # fp32 inputs would silently go through TF32 on tensor cores; "ieee" keeps fp32 exact.
    return "ieee" if dtype == torch.float32 else "tf32"
