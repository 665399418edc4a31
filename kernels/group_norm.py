"""GroupNorm + SiLU over channels-last tensors, optionally fused with the blend that precedes it.

Two launches, because one program per (batch, group) cannot fill a GPU at 32 groups:
1. statistics: grid (B*G, SPLIT), each program runs Welford per lane over a slice of the
   group's pixels and writes (count, mean, M2) partials. Welford, not sum/sum-of-squares:
   SD VAE activations reach the hundreds, where E[x^2] - E[x]^2 cancels in fp32;
2. normalise: grid over (pixel tile, channel tile, batch); each program merges the SPLIT
   partials of its channels' groups (Chan et al.), then writes ``silu(gamma*x_hat + beta)``.

With ``blend_with``/``blend_mask`` the normalised tensor is the blend ``x*m + f*(1-m)``
(``m`` sampled nearest from the full-resolution hole mask), computed in both launches from its
inputs rather than written and read back; ``return_blend`` also writes it, for a caller that
still needs it (a residual). With a binary mask each pixel reads only one of x and f.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from ._common import check_activation, check_device, interpreting, mask_strides
from .blend import blend_step


@triton.jit
def _gn_stats_kernel(
    x_ptr, f_ptr, m_ptr,  # (B, C, H, W) channels-last; f, m only when BLEND
    ws_ptr,  # (B*G, SPLIT, 3) fp32 partials: count, mean, M2
    HW, W, C, CG, G, PIX_PER_SPLIT,
    sm_n, sm_h, sm_w, STEP,
    BLEND: tl.constexpr, SPLIT: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_CG: tl.constexpr,
):
    bg = tl.program_id(0)
    s = tl.program_id(1)
    b = (bg // G).to(tl.int64)
    c = (bg % G) * CG + tl.arange(0, BLOCK_CG)
    c_ok = tl.arange(0, BLOCK_CG) < CG
    start = s * PIX_PER_SPLIT
    end = tl.minimum(start + PIX_PER_SPLIT, HW)
    count = tl.zeros((BLOCK_P, BLOCK_CG), dtype=tl.float32)
    mean = tl.zeros((BLOCK_P, BLOCK_CG), dtype=tl.float32)
    m2 = tl.zeros((BLOCK_P, BLOCK_CG), dtype=tl.float32)
    for p0 in range(start, end, BLOCK_P):
        p = p0 + tl.arange(0, BLOCK_P)
        p_ok = p < end
        ok = p_ok[:, None] & c_ok[None, :]
        offs = (b * HW + p)[:, None] * C + c[None, :]
        if BLEND:  # x*m + f*(1-m), each side read only where its weight is non-zero
            hm = tl.load(m_ptr + b * sm_n + ((p // W) * STEP) * sm_h + ((p % W) * STEP) * sm_w, mask=p_ok, other=0.0)
            hm = hm.to(tl.float32)[:, None]
            v = tl.load(x_ptr + offs, mask=ok & (hm != 0.0), other=0.0).to(tl.float32) * hm
            v += tl.load(f_ptr + offs, mask=ok & (hm != 1.0), other=0.0).to(tl.float32) * (1.0 - hm)
        else:
            v = tl.load(x_ptr + offs, mask=ok, other=0.0).to(tl.float32)
        new_count = count + ok.to(tl.float32)
        delta = v - mean
        mean += tl.where(ok, delta / tl.maximum(new_count, 1.0), 0.0)
        m2 += tl.where(ok, delta * (v - mean), 0.0)
        count = new_count
    # Merge the lanes. Few reductions on purpose: each tl.sum is a nested jit call, which the
    # interpreter makes expensive. The count is known without one.
    size: tl.constexpr = BLOCK_P * BLOCK_CG
    n = (tl.maximum(end - start, 0) * CG).to(tl.float32)
    mu = tl.sum(tl.reshape(count * mean, (size,)), axis=0) / tl.maximum(n, 1.0)
    d = mean - mu
    var_n = tl.sum(tl.reshape(m2 + count * d * d, (size,)), axis=0)
    base = ws_ptr + (bg * SPLIT + s) * 3
    tl.store(base, n)
    tl.store(base + 1, mu)
    tl.store(base + 2, var_n)


@triton.jit
def _gn_silu_kernel(
    x_ptr, f_ptr, m_ptr, ws_ptr, gamma_ptr, beta_ptr,
    y_ptr,  # (B, C, H, W) channels-last output
    xb_ptr,  # the blend itself when WRITE_BLEND
    HW, W, C, CG, G, eps,
    sm_n, sm_h, sm_w, STEP,
    BLEND: tl.constexpr, WRITE_BLEND: tl.constexpr, SPLIT: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):
    p = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    b = tl.program_id(2).to(tl.int64)
    p_ok = p < HW
    c_ok = c < C
    ok = p_ok[:, None] & c_ok[None, :]

    # Merge the SPLIT partials of each channel's group (Chan et al.'s parallel variance).
    part = ((b * G + c // CG) * SPLIT)[:, None] + tl.arange(0, SPLIT)[None, :]
    n_s = tl.load(ws_ptr + part * 3, mask=c_ok[:, None], other=0.0)
    mu_s = tl.load(ws_ptr + part * 3 + 1, mask=c_ok[:, None], other=0.0)
    m2_s = tl.load(ws_ptr + part * 3 + 2, mask=c_ok[:, None], other=0.0)
    n = tl.maximum(tl.sum(n_s, axis=1), 1.0)
    mean = tl.sum(n_s * mu_s, axis=1) / n
    d = mu_s - mean[:, None]
    var = tl.sum(m2_s + n_s * d * d, axis=1) / n
    rstd = 1.0 / tl.sqrt(var + eps)
    gamma = tl.load(gamma_ptr + c, mask=c_ok, other=0.0).to(tl.float32)
    beta = tl.load(beta_ptr + c, mask=c_ok, other=0.0).to(tl.float32)
    scale = rstd * gamma

    offs = (b * HW + p)[:, None] * C + c[None, :]
    if BLEND:  # x*m + f*(1-m), each side read only where its weight is non-zero
        hm = tl.load(m_ptr + b * sm_n + ((p // W) * STEP) * sm_h + ((p % W) * STEP) * sm_w, mask=p_ok, other=0.0)
        hm = hm.to(tl.float32)[:, None]
        v = tl.load(x_ptr + offs, mask=ok & (hm != 0.0), other=0.0).to(tl.float32) * hm
        v += tl.load(f_ptr + offs, mask=ok & (hm != 1.0), other=0.0).to(tl.float32) * (1.0 - hm)
    else:
        v = tl.load(x_ptr + offs, mask=ok, other=0.0).to(tl.float32)
    if WRITE_BLEND:
        tl.store(xb_ptr + offs, v.to(xb_ptr.dtype.element_ty), mask=ok)
    # (v - mean) * scale, not v * scale + (beta - mean * scale): the latter cancels badly when
    # the variance is tiny and the mean is not.
    y = (v - mean[None, :]) * scale[None, :] + beta[None, :]
    # silu with exp(-|y|) (no overflow); not tl.sigmoid, a nested jit call the interpreter makes slow
    e = tl.exp(-tl.abs(y))
    y = y * tl.where(y >= 0, 1.0 / (1.0 + e), e / (1.0 + e))
    tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=ok)


def _split(hw: int, cg: int) -> int:
    # Enough (batch, group, split) programs to fill ~132 SMs at 32 groups, each with >= ~16K
    # elements so the partials stay negligible; a power of two (tl.arange in the merge).
    return max(1, min(64, triton.next_power_of_2(triton.cdiv(hw * cg, 16384))))


def group_norm_silu(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    num_groups: int,
    eps: float = 1e-6,
    *,
    blend_with: torch.Tensor | None = None,
    blend_mask: torch.Tensor | None = None,
    return_blend: bool = False,
    split: int | None = None,
):
    """``silu(group_norm(v))`` with v = x, or v = ``x*m + blend_with*(1-m)`` when blending.

    x, blend_with: (B, C, H, W) channels-last, one dtype. weight, bias: (C,).
    blend_mask: (1 or B, 1, s*H, s*W) float 0/1 hole mask, integer s >= 1.
    Returns y, or (y, v) when ``return_blend``. ``split`` (a power of two) overrides how many
    programs share one group's statistics.
    """
    check_activation("x", x)
    B, C, H, W = x.shape
    if not isinstance(num_groups, int) or num_groups < 1 or C % num_groups:
        raise ValueError(f"num_groups: expected a positive divisor of C={C}, got {num_groups!r}")
    for name, t in (("weight", weight), ("bias", bias)):
        if not isinstance(t, torch.Tensor) or t.shape != (C,):
            got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"{name}: expected shape ({C},), got {got}")
    if (blend_with is None) != (blend_mask is None):
        raise ValueError("blend_with/blend_mask: give both or neither")
    if return_blend and blend_with is None:
        raise ValueError("return_blend: needs blend_with and blend_mask")
    step = 1
    if blend_with is not None:
        check_activation("blend_with", blend_with, tuple(x.shape), x.dtype)
        step = blend_step("blend_mask", blend_mask, B, H, W)
    if split is not None and (split < 1 or split & (split - 1)):
        raise ValueError(f"split: expected a power of two >= 1, got {split}")
    check_device(x, weight, bias, blend_with, blend_mask)

    G, CG, HW = num_groups, C // num_groups, H * W
    split = split or _split(HW, CG)
    ws = torch.empty((B * G, split, 3), device=x.device, dtype=torch.float32)
    y = torch.empty_like(x, memory_format=torch.channels_last)
    xb = torch.empty_like(x, memory_format=torch.channels_last) if return_blend else y
    f = blend_with if blend_with is not None else x
    m = blend_mask if blend_mask is not None else x
    sm = mask_strides(blend_mask) if blend_mask is not None else (0, 0, 0)
    block_cg = triton.next_power_of_2(CG)
    stats_p = max(16, 1024 // block_cg) if interpreting() else max(16, 2048 // block_cg)
    _gn_stats_kernel[(B * G, split)](
        x, f, m, ws, HW, W, C, CG, G, triton.cdiv(HW, split), *sm, step,
        BLEND=blend_with is not None, SPLIT=split, BLOCK_P=stats_p, BLOCK_CG=block_cg,
        num_warps=4,
    )
    block_p, block_c = (128, triton.next_power_of_2(C)) if interpreting() else (64, min(128, triton.next_power_of_2(C)))
    _gn_silu_kernel[(triton.cdiv(HW, block_p), triton.cdiv(C, block_c), B)](
        x, f, m, ws, weight, bias, y, xb, HW, W, C, CG, G, float(eps), *sm, step,
        BLEND=blend_with is not None, WRITE_BLEND=return_blend, SPLIT=split,
        BLOCK_P=block_p, BLOCK_C=block_c, num_warps=4,
    )
    return (y, xb) if return_blend else y


def group_norm_silu_reference(
    x, weight, bias, num_groups, eps=1e-6, *, blend_with=None, blend_mask=None, return_blend=False, split=None
):
    """The unfused sequence: blend (as the decoder's reference), F.group_norm, F.silu."""
    del split  # a launch detail of the kernel
    v = x
    if blend_with is not None:
        step = blend_mask.shape[-2] // x.shape[-2]
        m = blend_mask[:, :, ::step, ::step].to(x.dtype)
        v = x * m + blend_with * (1 - m)
    y = F.silu(F.group_norm(v, num_groups, weight, bias, eps))
    return (y, v) if return_blend else y
