"""Implicit-GEMM convolution over channels-last tensors, fused with what cuDNN cannot fuse.

GEMM view: M = B*Ho*Wo output pixels, N = Cout, K = KH*KW*Cin (tap-major, channel-minor, so
every A tile is a contiguous run of channels of one input pixel). Fusions, each a flag:

- mask on load: the input is multiplied by ``1 - hole`` (or ``valid``) as it is loaded, so the
  masked image ``x * (1 - mask)`` is never written; the mask is read at input resolution;
- partial convolution (NVIDIA semantics, Liu et al. 2018): the window sum of the valid mask is
  accumulated next to the GEMM, ``ratio = KH*KW / (sum + 1e-8) * clamp(sum, 0, 1)`` in fp32 (the
  1e-8 guard underflows in fp16), the updated mask is written once per output pixel;
- bias, and a second ReLU'd output that feeds the next condition-branch layer;
- the mask-guided blend in the epilogue, with the full-resolution hole mask sampled nearest at
  the output resolution by index arithmetic (no resized mask): ``out = other*m + conv*(1-m)``
  (the conv is the condition feature blended into the decoder); ``other`` is only read where
  its weight is non-zero.

Addresses are int64 where a product can pass 2**31 (``pixel_offsets``); they are computed once
per tile and each tap adds a scalar. Sizes that change with the image (H, W, M, mask strides)
are not specialised on (``do_not_specialize``): one build serves every image size, so the
builds are set by the channel counts, the flags and the dtype (see docs/kernels.md).
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from ._common import (
    check_activation,
    check_device,
    check_mask,
    configs,
    dot_precision,
    mask_strides,
    pixel_offsets,
    smem_limit,
    target_capability,
)
from .mask_blend import blend_step
from .partial_ratio import partial_conv_ratio

# (BLOCK_M, BLOCK_N, BLOCK_K, warps, stages). Every config here compiles without register spills
# for sm_80 and sm_90 at the decoder's shapes (tests/kernels/test_kernel_builds.py, the table in
# docs/kernels.md). Dropped for spilling, with no measurement to justify them: 128x128x32 with
# 4 warps (255 registers in the fused variants), 256x128x64 and 128x256x64 with 8 warps (a
# 32K-element fp32 accumulator: up to ~870 B spilled even with wgmma on sm_90).
_TILES = (
    (128, 128, 64, 8, 3),
    (128, 128, 32, 8, 4),
    (128, 64, 32, 4, 4),
    (64, 128, 32, 4, 4),
    (64, 64, 32, 4, 4),
)
_GPU_CONFIGS = [
    triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk}, num_warps=w, num_stages=s)
    for bm, bn, bk, w, s in _TILES
]
_FP32_TILE = (64, 64, 32, 4, 4)
# Interpreter: one config (autotuning needs a GPU), large tiles (few Python-level programs).
_INTERPRETER_CONFIG = triton.Config({"BLOCK_M": 512, "BLOCK_N": 64, "BLOCK_K": 64}, num_warps=4, num_stages=1)

# IN_MASK modes (constexpr)
_NO_MASK, _HOLE, _VALID = 0, 1, 2


def _tile_key(c: triton.Config) -> tuple:
    return (c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.kwargs["BLOCK_K"], c.num_warps, c.num_stages)


def smem_estimate(block_m: int, block_n: int, block_k: int, stages: int, element_size: int) -> int:
    """Upper bound of the pipelined A and B tiles' shared memory (bytes); Triton's own figure,
    checked by the compile test, is at most this."""
    return stages * (block_m * block_k + block_k * block_n) * element_size


def prune_configs(configs_in, nargs, **kwargs):
    """The configs worth offering for one problem on the current target.

    Tiles are clamped to the next power of two of the problem (M from its autotune bucket, so
    the choice depends only on the autotune key; at least 16, tl.dot's minimum), duplicates
    merged (a clamped K tile, one chunk of channels per tap, keeps one pipeline depth per
    tile); configs over the target's shared memory dropped.
    """
    limit = smem_limit(target_capability())
    esize = nargs["x_ptr"].element_size()
    caps = (
        max(16, triton.next_power_of_2(nargs["Cin"])),
        max(16, triton.next_power_of_2(nargs["Cout"])),
        max(16, 2 ** (nargs["M_BUCKET"])),
    )
    if esize == 4:
        # fp32 takes IEEE FMA dots (no tensor cores): every tile above 64x64 spills registers in
        # the masked variants (docs/kernels.md), and fp32 is the exact path, not the fast one.
        configs_in = [c for c in configs_in if _tile_key(c) == _FP32_TILE]
    out, seen = [], set()
    for c in configs_in:
        bm, bn, bk, w, s = _tile_key(c)
        clamped_k = bk > caps[0]
        bk, bn, bm = min(bk, caps[0]), min(bn, caps[1]), min(bm, caps[2])
        same = (bm, bn, bk, w, None if clamped_k else s)
        if smem_estimate(bm, bn, bk, s, esize) > limit or same in seen:
            continue
        seen.add(same)
        out.append(triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk}, num_warps=w, num_stages=s))
    if not out:  # every config over the limit: the smallest, with two stages
        out.append(triton.Config({"BLOCK_M": min(64, caps[2]), "BLOCK_N": min(64, caps[1]),
                                  "BLOCK_K": min(32, caps[0])}, num_warps=4, num_stages=2))
    return out


@triton.autotune(
    configs=configs(_GPU_CONFIGS, _INTERPRETER_CONFIG),
    key=["Cin", "Cout", "KH", "STRIDE", "M_BUCKET", "IN_MASK", "PARTIAL", "BLEND"],
    prune_configs_by={"early_config_prune": prune_configs},
)
@triton.jit(do_not_specialize=["H", "W", "Ho", "Wo", "M", "sm_n", "sm_h", "sm_w", "sb_n", "sb_h", "sb_w",
                               "BLEND_STEP", "M_BUCKET"])
def _conv2d_fused_kernel(
    x_ptr,  # (B, Cin, H, W) channels-last input
    w_ptr,  # (Cout, Cin, KH, KW) weight, any layout (strides sw_*)
    bias_ptr,  # (Cout,) or dummy
    out_ptr,  # (B, Cout, Ho, Wo) channels-last: the conv, or the blend when BLEND
    relu_ptr,  # same layout: relu(conv) when RELU_OUT
    in_mask_ptr,  # (1 or B, 1, H, W) mask applied on load (hole or valid) when IN_MASK
    upd_ptr,  # (B, 1, Ho, Wo) fp32 contiguous: partial conv's updated mask when PARTIAL
    other_ptr,  # (B, Cout, Ho, Wo) channels-last blend operand when BLEND
    bmask_ptr,  # (1 or B, 1, Ho*step, Wo*step) full-resolution hole mask when BLEND
    H, W, Cin, Ho, Wo, Cout, M,
    sx_n, sx_c, sx_h, sx_w,
    sw_o, sw_i, sw_h, sw_w,
    so_n, so_c, so_h, so_w,  # shared by out, relu and other (all channels-last, same shape)
    sm_n, sm_h, sm_w,  # in_mask (batch stride 0 broadcasts)
    sb_n, sb_h, sb_w, BLEND_STEP,  # blend mask and its nearest sampling step
    M_BUCKET,  # autotune key only: log2 bucket of M
    KH: tl.constexpr, KW: tl.constexpr, STRIDE: tl.constexpr, PAD: tl.constexpr,
    IN_MASK: tl.constexpr, PARTIAL: tl.constexpr,
    HAS_BIAS: tl.constexpr, RELU_OUT: tl.constexpr, BLEND: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    # Output-channel tiles vary fastest: the programs that share an input tile run together, so
    # it is read from HBM once and served from L2 to the others (weights are small and stay in L2).
    n_tiles = (Cout + BLOCK_N - 1) // BLOCK_N
    pid_m = tl.program_id(0) // n_tiles
    pid_n = tl.program_id(0) % n_tiles
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    m_ok = offs_m < M
    n_ok = offs_n < Cout
    ow = offs_m % Wo
    oh = (offs_m // Wo) % Ho
    b = offs_m // (Wo * Ho)

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    window = tl.zeros((BLOCK_M,), dtype=tl.float32)
    # Everything that does not depend on the tap or the channel chunk, hoisted: the int64
    # address of each output pixel's window corner; a tap adds a scalar to it.
    ih0 = oh * STRIDE - PAD
    iw0 = ow * STRIDE - PAD
    x_corner = x_ptr + pixel_offsets(b, ih0, iw0, sx_n, sx_h, sx_w)
    m_corner = in_mask_ptr + pixel_offsets(b, ih0, iw0, sm_n, sm_h, sm_w)
    w_tile = w_ptr + offs_n[None, :] * sw_o + offs_k[:, None] * sw_i
    n_chunks = (Cin + BLOCK_K - 1) // BLOCK_K
    # One flat K loop over (tap, channel chunk) rather than nested loops: Triton software-
    # pipelines the loads of a single loop, and Cin / BLOCK_K alone is often only 2-6.
    for it in range(0, KH * KW * n_chunks):
        tap = it // n_chunks
        c0 = (it - tap * n_chunks) * BLOCK_K
        kh = tap // KW
        kw = tap - kh * KW
        ih = ih0 + kh
        iw = iw0 + kw
        inside = m_ok & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
        k_ok = offs_k < Cin - c0
        a = tl.load(
            (x_corner + (kh * sx_h + kw * sx_w + c0 * sx_c))[:, None] + offs_k[None, :] * sx_c,
            mask=inside[:, None] & k_ok[None, :],
            other=0.0,
        )
        if IN_MASK != 0:
            mv = tl.load(m_corner + (kh * sm_h + kw * sm_w), mask=inside, other=0.0).to(tl.float32)
            if IN_MASK == 1:
                keep = tl.where(inside, 1.0 - mv, 0.0)
            else:
                keep = mv
            # Same arithmetic as the reference's x * valid (in the input dtype).
            a = a * keep[:, None].to(a.dtype)
            if PARTIAL:
                # Padding counts as invalid; count each tap once, not once per channel chunk.
                if c0 == 0:
                    window += keep
        wt = tl.load(w_tile + (c0 * sw_i + kh * sw_h + kw * sw_w), mask=k_ok[:, None] & n_ok[None, :], other=0.0)
        acc = tl.dot(a, wt, acc, input_precision=DOT_PRECISION)

    if PARTIAL:
        updated = tl.minimum(tl.maximum(window, 0.0), 1.0)
        ratio = (KH * KW) / (window + 1e-8) * updated
        acc = acc * ratio[:, None]
        if pid_n == 0:
            tl.store(upd_ptr + offs_m, updated, mask=m_ok)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_n, mask=n_ok, other=0.0).to(tl.float32)
        if PARTIAL:
            acc += bias[None, :] * updated[:, None]
        else:
            acc += bias[None, :]

    ok = m_ok[:, None] & n_ok[None, :]
    o_off = pixel_offsets(b, oh, ow, so_n, so_h, so_w)[:, None] + offs_n[None, :] * so_c
    if RELU_OUT:
        tl.store(relu_ptr + o_off, tl.maximum(acc, 0.0).to(relu_ptr.dtype.element_ty), mask=ok)
    if BLEND:
        b_off = pixel_offsets(b, oh * BLEND_STEP, ow * BLEND_STEP, sb_n, sb_h, sb_w)
        hm = tl.load(bmask_ptr + b_off, mask=m_ok, other=0.0).to(tl.float32)[:, None]
        # Round the conv to the output dtype first, as the unfused sequence does.
        conv = acc.to(out_ptr.dtype.element_ty).to(tl.float32)
        other = tl.load(other_ptr + o_off, mask=ok & (hm != 0.0), other=0.0).to(tl.float32)
        acc = other * hm + conv * (1.0 - hm)
    tl.store(out_ptr + o_off, acc.to(out_ptr.dtype.element_ty), mask=ok)


class ConvResult(NamedTuple):
    out: torch.Tensor  # the conv (+ bias), or the blend when blend_with is given
    relu: torch.Tensor | None  # relu(conv) when relu_out
    mask: torch.Tensor | None  # partial conv's updated valid mask (B, 1, Ho, Wo) fp32 when partial


def _output_size(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


def conv2d_fused(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    stride: int = 1,
    padding: int = 0,
    in_mask: torch.Tensor | None = None,
    in_mask_is_hole: bool = False,
    partial: bool = False,
    relu_out: bool = False,
    blend_with: torch.Tensor | None = None,
    blend_mask: torch.Tensor | None = None,
) -> ConvResult:
    """Fused conv; see the module docstring. Activations channels-last, masks 0/1 float.

    x: (B, Cin, H, W). weight: (Cout, Cin, K, K), x's dtype. bias: (Cout,).
    in_mask: (1 or B, 1, H, W); the input is multiplied by ``1 - in_mask`` if ``in_mask_is_hole``
    else by ``in_mask``; required by ``partial`` (whose window sums count the same kept pixels).
    blend_with: (B, Cout, Ho, Wo); blend_mask: (1 or B, 1, s*Ho, s*Wo) hole mask, integer s >= 1;
    then out = blend_with*m + conv*(1-m) (the conv fills what is outside the hole).
    """
    check_activation("x", x)
    B, Cin, H, W = x.shape
    if not isinstance(weight, torch.Tensor) or weight.ndim != 4 or weight.shape[1] != Cin or weight.shape[2] != weight.shape[3]:
        got = tuple(weight.shape) if isinstance(weight, torch.Tensor) else type(weight).__name__
        raise ValueError(f"weight: expected shape (Cout, {Cin}, K, K), got {got}")
    if weight.dtype != x.dtype:
        raise ValueError(f"weight: expected dtype {x.dtype} (x's), got {weight.dtype}")
    Cout, K = weight.shape[0], weight.shape[2]
    if bias is not None and (bias.ndim != 1 or bias.shape[0] != Cout):
        raise ValueError(f"bias: expected shape ({Cout},), got {tuple(bias.shape)}")
    if stride < 1 or padding < 0:
        raise ValueError(f"stride/padding: expected stride >= 1 and padding >= 0, got {stride}/{padding}")
    Ho, Wo = (_output_size(s, K, stride, padding) for s in (H, W))
    if Ho < 1 or Wo < 1:
        raise ValueError(f"x: spatial size {H}x{W} is too small for a {K}x{K} kernel with padding {padding}")
    if B * Ho * Wo >= 2**31:
        raise ValueError(f"x: at most 2**31 - 1 output pixels per call (B*Ho*Wo), got {B * Ho * Wo}; split the batch")
    if in_mask is not None:
        check_mask("in_mask", in_mask, B, H, W)
    if partial and in_mask is None:
        raise ValueError("in_mask: partial convolution needs the mask (hole or valid) of x")
    if (blend_with is None) != (blend_mask is None):
        raise ValueError("blend_with/blend_mask: give both or neither")
    step = 1
    if blend_with is not None:
        check_activation("blend_with", blend_with, (B, Cout, Ho, Wo), x.dtype)
        step = blend_step("blend_mask", blend_mask, B, Ho, Wo)
    check_device(x, weight, bias, in_mask, blend_with, blend_mask)

    def empty_like_out():
        return torch.empty((B, Cout, Ho, Wo), device=x.device, dtype=x.dtype, memory_format=torch.channels_last)

    out = empty_like_out()
    relu = empty_like_out() if relu_out else None
    updated = torch.empty((B, 1, Ho, Wo), device=x.device, dtype=torch.float32) if partial else None
    M = B * Ho * Wo
    in_strides = mask_strides(in_mask) if in_mask is not None else (0, 0, 0)
    b_strides = mask_strides(blend_mask) if blend_mask is not None else (0, 0, 0)
    dummy = out  # never dereferenced: the constexpr flags compile the access out
    grid = lambda meta: (triton.cdiv(M, meta["BLOCK_M"]) * triton.cdiv(Cout, meta["BLOCK_N"]),)  # noqa: E731
    _conv2d_fused_kernel[grid](
        x, weight, bias if bias is not None else dummy, out, relu if relu_out else dummy,
        in_mask if in_mask is not None else dummy, updated if partial else dummy,
        blend_with if blend_with is not None else dummy, blend_mask if blend_mask is not None else dummy,
        H, W, Cin, Ho, Wo, Cout, M,
        *x.stride(),
        *weight.stride(),
        *out.stride(),
        *in_strides,
        *b_strides, step,
        max(M, 1).bit_length(),
        KH=K, KW=K, STRIDE=stride, PAD=padding,
        IN_MASK=_NO_MASK if in_mask is None else (_HOLE if in_mask_is_hole else _VALID),
        PARTIAL=partial, HAS_BIAS=bias is not None, RELU_OUT=relu_out,
        BLEND=blend_with is not None,
        DOT_PRECISION=dot_precision(x.dtype),
    )
    return ConvResult(out, relu, updated)


def conv2d_fused_reference(
    x, weight, bias=None, *, stride=1, padding=0, in_mask=None, in_mask_is_hole=False,
    partial=False, relu_out=False, blend_with=None, blend_mask=None,
) -> ConvResult:
    """The unfused PyTorch sequence ``conv2d_fused`` replaces (same arguments, same results).

    Partial convolution follows NVIDIA's PartialConv2d (single-channel mask), ratio in fp32,
    as ``asymvq.models.condition.partial_conv2d`` does.
    """
    valid = None
    if in_mask is not None:
        valid = (1 - in_mask) if in_mask_is_hole else in_mask
        x = x * valid.to(x.dtype)
    updated = None
    if partial:
        ratio, updated = partial_conv_ratio(valid.expand(x.shape[0], -1, -1, -1), weight.shape[-1], stride, padding)
        out = F.conv2d(x, weight, None, stride, padding).float() * ratio
        if bias is not None:
            out = out + bias.float().view(1, -1, 1, 1) * updated
        out = out.to(x.dtype)
    else:
        out = F.conv2d(x, weight, bias, stride, padding)
    relu = torch.relu(out) if relu_out else None
    if blend_with is not None:
        step = blend_mask.shape[-2] // out.shape[-2]
        m = blend_mask[:, :, ::step, ::step].to(out.dtype)
        out = blend_with * m + out * (1 - m)
    return ConvResult(out, relu, updated)
