"""Mask-guided blend ``h*m + f*(1-m)`` over channels-last tensors.

``m`` is the full-resolution hole mask sampled nearest at h's resolution by index arithmetic
(step = mask size / h size), so no resized mask tensor is made. ``h`` is only read where
m != 0 and ``f`` only where m != 1: with a binary mask every pixel reads one of the two, not
both (the reference formula reads both). The arithmetic is the reference's, so for a soft mask
the result is the same too; the only difference is that a NaN/Inf on the unselected side does
not leak through ``0 * Inf``.

``load_blend`` is shared with the GroupNorm kernels, which fuse this blend into their loads.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import check_activation, check_device, check_mask, interpreting, mask_strides, pixel_offsets


@triton.jit
def load_blend(h_ptr, f_ptr, m_ptr, offs, ok, m_offs, m_ok):
    """fp32 ``h*m + f*(1-m)`` at element offsets ``offs`` [P, C], mask offsets ``m_offs`` [P]."""
    hm = tl.load(m_ptr + m_offs, mask=m_ok, other=0.0).to(tl.float32)[:, None]
    h = tl.load(h_ptr + offs, mask=ok & (hm != 0.0), other=0.0).to(tl.float32)
    f = tl.load(f_ptr + offs, mask=ok & (hm != 1.0), other=0.0).to(tl.float32)
    return h * hm + f * (1.0 - hm)


@triton.jit(do_not_specialize=["P", "HW", "W", "sm_n", "sm_h", "sm_w", "STEP"])
def _blend_kernel(
    h_ptr, f_ptr,  # (B, C, H, W) channels-last, contiguous
    m_ptr,  # (1 or B, 1, H*step, W*step) hole mask, any strides
    out_ptr,  # (B, C, H, W) channels-last
    P, HW, W, C,  # P = B*H*W pixels
    sm_n, sm_h, sm_w, STEP,
    BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):
    p = (tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)).to(tl.int64)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    p_ok = p < P
    ok = p_ok[:, None] & (c < C)[None, :]
    b = p // HW
    y = (p % HW) // W
    x = p % W
    offs = p[:, None] * C + c[None, :]
    m_offs = pixel_offsets(b, y * STEP, x * STEP, sm_n, sm_h, sm_w)
    v = load_blend(h_ptr, f_ptr, m_ptr, offs, ok, m_offs, p_ok)
    tl.store(out_ptr + offs, v.to(out_ptr.dtype.element_ty), mask=ok)


def blend_step(name: str, mask: torch.Tensor, batch: int, height: int, width: int) -> int:
    """Validate a full-resolution hole mask for features of size height x width; return the step."""
    hm, wm = mask.shape[-2:] if isinstance(mask, torch.Tensor) and mask.ndim == 4 else (0, 0)
    step = hm // height
    if step < 1 or hm != step * height or wm != step * width:
        raise ValueError(
            f"{name}: expected a (1 or {batch}, 1, s*{height}, s*{width}) mask, integer s >= 1, "
            f"got shape {tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__}"
        )
    check_mask(name, mask, batch, hm, wm)
    return step


def blend(h: torch.Tensor, f: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``h*m + f*(1-m)``, ``m`` = ``mask`` sampled nearest at h's size (see the module docstring).

    h, f: (B, C, H, W) channels-last, one dtype. mask: (1 or B, 1, s*H, s*W) float 0/1 hole mask,
    any strides (a ``mask[:, :, ::s, ::s]`` view works too, with s = 1).
    """
    check_activation("h", h)
    B, C, H, W = h.shape
    check_activation("f", f, tuple(h.shape), h.dtype)
    step = blend_step("mask", mask, B, H, W)
    check_device(h, f, mask)
    out = torch.empty_like(h, memory_format=torch.channels_last)
    P = B * H * W
    block_p, block_c = (128, triton.next_power_of_2(C)) if interpreting() else (64, min(128, triton.next_power_of_2(C)))
    grid = (triton.cdiv(P, block_p), triton.cdiv(C, block_c))
    _blend_kernel[grid](h, f, mask, out, P, H * W, W, C, *mask_strides(mask), step, BLOCK_P=block_p, BLOCK_C=block_c)
    return out


def blend_reference(h: torch.Tensor, f: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The decoder's reference blend (``TorchOps.blend``) after nearest sampling of the mask."""
    step = mask.shape[-2] // h.shape[-2]
    m = mask[:, :, ::step, ::step].to(h.dtype)
    return h * m + f * (1 - m)
