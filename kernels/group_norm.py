"""GroupNorm + SiLU over channels-last tensors, optionally fused with the blend that precedes it.

Three launches, shaped by the channels-last layout (a pixel's channels are contiguous):
1. partial statistics: grid (B, SPLIT, channel tiles); each program walks a slice of the
   pixels reading whole rows of channels (coalesced, unlike a per-group walk that would read
   C/G-channel slivers) and keeps a Welford (mean, M2) per lane, then per channel. Welford,
   not sum/sum-of-squares: SD VAE activations reach the hundreds, where E[x^2] - E[x]^2
   cancels in fp32;
2. finalize: merges the per-(split, channel) partials of each group (Chan et al.) into
   (mean, rstd) per (batch, group);
3. normalise: grid (pixel tiles, channel tiles, B) writing ``silu(gamma*x_hat + beta)``.

With ``blend_with``/``blend_mask`` the normalised tensor is the blend ``x*m + f*(1-m)``
(``m`` sampled nearest from the full-resolution hole mask), computed in launches 1 and 3 from
its inputs rather than written and read back; ``return_blend`` also writes it, for a caller
that still needs it (a residual). With a binary mask each pixel reads only one of x and f.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from ._common import check_activation, check_device, interpreting, mask_strides, pixel_offsets
from .mask_blend import blend_step, load_blend

# Sizes that change with the image are not specialised on: one build serves every image size.
_SIZES = ["HW", "W", "PIX_PER_SPLIT", "sm_n", "sm_h", "sm_w", "STEP"]


@triton.jit(do_not_specialize=_SIZES)
def _gn_partial_stats_kernel(
    x_ptr, f_ptr, m_ptr,  # (B, C, H, W) channels-last; f, m only when BLEND
    ws_ptr,  # (B, SPLIT, C, 2) fp32: per-channel mean and M2 over the split's pixels
    HW, W, C, PIX_PER_SPLIT,
    sm_n, sm_h, sm_w, STEP,
    BLEND: tl.constexpr, SPLIT: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    s = tl.program_id(1)
    c = tl.program_id(2) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = c < C
    start = s * PIX_PER_SPLIT
    end = tl.minimum(start + PIX_PER_SPLIT, HW)
    count = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float32)
    mean = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float32)
    m2 = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float32)
    for p0 in range(start, end, BLOCK_P):
        p = p0 + tl.arange(0, BLOCK_P)
        p_ok = p < end
        ok = p_ok[:, None] & c_ok[None, :]
        offs = (b * HW + p)[:, None] * C + c[None, :]
        if BLEND:  # x*m + f*(1-m), each side read only where its weight is non-zero
            m_offs = pixel_offsets(b, (p // W) * STEP, (p % W) * STEP, sm_n, sm_h, sm_w)
            v = load_blend(x_ptr, f_ptr, m_ptr, offs, ok, m_offs, p_ok)
        else:
            v = tl.load(x_ptr + offs, mask=ok, other=0.0).to(tl.float32)
        new_count = count + ok.to(tl.float32)
        delta = v - mean
        mean += tl.where(ok, delta / tl.maximum(new_count, 1.0), 0.0)
        m2 += tl.where(ok, delta * (v - mean), 0.0)
        count = new_count
    # Merge the pixel lanes of each channel. The count is known without a reduction (each
    # tl.sum is a nested jit call, which the interpreter makes expensive).
    n = tl.maximum(end - start, 1).to(tl.float32)
    mean_c = tl.sum(count * mean, axis=0) / n
    d = mean - mean_c[None, :]
    m2_c = tl.sum(m2 + count * d * d, axis=0)
    out = ws_ptr + ((b * SPLIT + s) * C + c) * 2
    tl.store(out, mean_c, mask=c_ok)
    tl.store(out + 1, m2_c, mask=c_ok)


@triton.jit(do_not_specialize=["HW", "PIX_PER_SPLIT"])
def _gn_finalize_kernel(
    ws_ptr,  # (B, SPLIT, C, 2) partials
    stats_ptr,  # (B, G, 2) fp32: mean, rstd
    HW, C, CG, G, PIX_PER_SPLIT, group_size, eps,  # group_size = HW * CG, as a float
    SPLIT: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_CG: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    g = tl.program_id(1) * BLOCK_G + tl.arange(0, BLOCK_G)
    r = tl.arange(0, SPLIT * BLOCK_CG)  # (split, channel-in-group) pairs, flattened
    s = r // BLOCK_CG
    j = r % BLOCK_CG
    ok = (g < G)[:, None] & (j < CG)[None, :]
    n_s = tl.minimum(tl.maximum(HW - s * PIX_PER_SPLIT, 0), PIX_PER_SPLIT).to(tl.float32)[None, :]
    part = ws_ptr + ((b * SPLIT + s[None, :]) * C + g[:, None] * CG + j[None, :]) * 2
    mu = tl.load(part, mask=ok, other=0.0)
    m2 = tl.load(part + 1, mask=ok, other=0.0)
    mean = tl.sum(tl.where(ok, n_s * mu, 0.0), axis=1) / group_size
    d = mu - mean[:, None]
    var = tl.sum(tl.where(ok, m2 + n_s * d * d, 0.0), axis=1) / group_size
    out = stats_ptr + (b * G + g) * 2
    tl.store(out, mean, mask=g < G)
    tl.store(out + 1, 1.0 / tl.sqrt(var + eps), mask=g < G)


@triton.jit(do_not_specialize=_SIZES)
def _gn_silu_kernel(
    x_ptr, f_ptr, m_ptr, stats_ptr, gamma_ptr, beta_ptr,
    y_ptr,  # (B, C, H, W) channels-last output
    xb_ptr,  # the blend itself when WRITE_BLEND
    HW, W, C, CG, G,
    sm_n, sm_h, sm_w, STEP,
    BLEND: tl.constexpr, WRITE_BLEND: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):
    p = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    b = tl.program_id(2).to(tl.int64)
    p_ok = p < HW
    c_ok = c < C
    ok = p_ok[:, None] & c_ok[None, :]
    st = stats_ptr + (b * G + c // CG) * 2
    mean = tl.load(st, mask=c_ok, other=0.0)
    scale = tl.load(st + 1, mask=c_ok, other=0.0) * tl.load(gamma_ptr + c, mask=c_ok, other=0.0).to(tl.float32)
    beta = tl.load(beta_ptr + c, mask=c_ok, other=0.0).to(tl.float32)

    offs = (b * HW + p)[:, None] * C + c[None, :]
    if BLEND:
        m_offs = pixel_offsets(b, (p // W) * STEP, (p % W) * STEP, sm_n, sm_h, sm_w)
        v = load_blend(x_ptr, f_ptr, m_ptr, offs, ok, m_offs, p_ok)
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


def _split(hw: int) -> int:
    # Enough (batch, split, channel-tile) programs to fill ~132 SMs at 512x512 and above, each
    # walking >= ~1K pixels so the partials stay small; a power of two (tl.arange in finalize).
    return max(1, min(64, triton.next_power_of_2(triton.cdiv(hw, 1024))))


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
    pixel slices the statistics are computed over.
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
    split = split or _split(HW)
    pix_per_split = triton.cdiv(HW, split)
    ws = torch.empty((B, split, C, 2), device=x.device, dtype=torch.float32)
    stats = torch.empty((B, G, 2), device=x.device, dtype=torch.float32)
    y = torch.empty_like(x, memory_format=torch.channels_last)
    xb = torch.empty_like(x, memory_format=torch.channels_last) if return_blend else y
    f = blend_with if blend_with is not None else x
    m = blend_mask if blend_mask is not None else x
    sm = mask_strides(blend_mask) if blend_mask is not None else (0, 0, 0)
    blend = blend_with is not None
    # The interpreter is fastest with few, large programs; a GPU wants register-sized tiles.
    c_pow2 = triton.next_power_of_2(C)
    stats_c, stats_p = (c_pow2, 128) if interpreting() else (min(c_pow2, 64), 64)
    _gn_partial_stats_kernel[(B, split, triton.cdiv(C, stats_c))](
        x, f, m, ws, HW, W, C, pix_per_split, *sm, step,
        BLEND=blend, SPLIT=split, BLOCK_P=stats_p, BLOCK_C=stats_c, num_warps=4,
    )
    block_cg = triton.next_power_of_2(CG)
    g_pow2 = triton.next_power_of_2(G)
    block_g = g_pow2 if interpreting() else max(1, min(g_pow2, 4096 // (split * block_cg)))
    _gn_finalize_kernel[(B, triton.cdiv(G, block_g))](
        ws, stats, HW, C, CG, G, pix_per_split, float(HW * CG), float(eps),
        SPLIT=split, BLOCK_G=block_g, BLOCK_CG=block_cg, num_warps=4,
    )
    block_p, block_c = (128, c_pow2) if interpreting() else (64, min(128, c_pow2))
    _gn_silu_kernel[(triton.cdiv(HW, block_p), triton.cdiv(C, block_c), B)](
        x, f, m, stats, weight, bias, y, xb, HW, W, C, CG, G, *sm, step,
        BLEND=blend, WRITE_BLEND=return_blend, BLOCK_P=block_p, BLOCK_C=block_c, num_warps=4,
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
