"""Validation and normalisation of what the decoder is fed.

Rules (also in docs/decoder.md):
- ``latents``: float tensor (B, latent_channels, h, w), B, h, w >= 1, on the decoder's device,
  finite; any float dtype, cast to the decoder's (integer and bool latents are refused).
- ``image``: float tensor (B or 1, 3, 8h, 8w), the *unmasked* source in [-1, 1], finite, on the
  latents' device; any float dtype, cast to the decoder's.
- ``mask``: (B or 1, 1 or 3, 8h, 8w) or (8h, 8w); 1 = hole to regenerate, 0 = keep.
  Any dtype (bool, integer, float). Values must be binary: all in {0, 1}, or all in
  {0, 255} (8-bit masks). A 3-channel mask must have identical channels. Soft masks
  (anti-aliased edges, grayscale) are rejected: binarise them with ``prepare_mask``.
Image and mask come together or not at all; batch 1 broadcasts to the latent batch.
"""
from __future__ import annotations

import torch

# Soft grayscale masks are binarised at this level, as the official inpainting script does.
DEFAULT_MASK_THRESHOLD = 0.5


def prepare_mask(mask, threshold: float = DEFAULT_MASK_THRESHOLD) -> torch.Tensor:
    """Binarise a soft mask: values scaled to [0, 1] (8-bit when max > 1), then ``> threshold``.

    Returns a float tensor of 0/1 with the same shape. Use it for masks that come from
    images with anti-aliased edges; the decoder itself only accepts binary masks.
    """
    m = torch.as_tensor(mask)
    if m.dtype == torch.bool:
        return m.float()
    m = m.float()
    if m.numel() and float(m.max()) > 1.0:
        m = m / 255.0
    return (m > threshold).float()


def _fail(arg: str, expected: str, got: str) -> None:
    raise ValueError(f"{arg}: expected {expected}, got {got}")


def check_latents(latents, latent_channels: int, *, dtype: torch.dtype | None = None,
                  device: torch.device | None = None) -> torch.Tensor:
    """Checked latents, cast to ``dtype`` when given (any float dtype is accepted: fp16 latents from
    an fp16 UNet into an fp32 decoder, fp64 from numpy); finiteness is checked after the cast."""
    if not isinstance(latents, torch.Tensor):
        _fail("latents", "a torch.Tensor", type(latents).__name__)
    if latents.ndim != 4 or latents.shape[1] != latent_channels:
        _fail("latents", f"shape (B, {latent_channels}, h, w)", f"shape {tuple(latents.shape)}")
    if 0 in latents.shape:
        _fail("latents", f"shape (B, {latent_channels}, h, w) with B, h, w >= 1", f"shape {tuple(latents.shape)}")
    if not latents.is_floating_point():
        _fail("latents", "a floating-point tensor", f"dtype {latents.dtype}")
    if device is not None and latents.device != device:
        _fail("latents", f"a tensor on the decoder's device {device}", f"device {latents.device} (move it with .to)")
    if dtype is not None and latents.dtype != dtype:
        latents = latents.to(dtype)
    if not bool(torch.isfinite(latents).all()):
        _fail("latents", "finite values" + (f" (in {dtype})" if dtype is not None else ""), "NaN or Inf")
    return standard_layout(latents)


def standard_layout(t: torch.Tensor) -> torch.Tensor:
    """``t`` as it is when contiguous or channels-last, else a contiguous copy.

    A transposed, expanded or sliced input is the same values in another memory layout, and the
    CPU's conv kernels (oneDNN) may pick another algorithm for another layout: on an AVX2-only CPU
    a transposed mask changed the 5th digit of the decode. Normalising here makes every accepted
    form of an input run the same kernels, so equal inputs decode to equal bits on every CPU.
    """
    if t.is_contiguous() or t.ndim == 4 and t.is_contiguous(memory_format=torch.channels_last):
        return t
    return t.contiguous()


def _binary_mask(mask: torch.Tensor) -> torch.Tensor:
    """0/1 float mask from a bool, {0,1} or {0,255} mask; ValueError otherwise."""
    if mask.dtype == torch.bool:
        return mask.float()
    m = mask.float()
    if not bool(torch.isfinite(m).all()):
        _fail("mask", "binary values {0, 1} or {0, 255}", "NaN or Inf")
    is01 = bool(((m == 0) | (m == 1)).all())
    if is01:
        return m
    is0255 = bool(((m == 0) | (m == 255)).all())
    if is0255:
        return m / 255.0
    lo, hi = float(m.min()), float(m.max())
    _fail(
        "mask",
        "binary values, all in {0, 1} or all in {0, 255} (1/255 = hole); "
        "binarise soft masks with asymvq.prepare_mask(mask, threshold=0.5)",
        f"non-binary values in [{lo:g}, {hi:g}]",
    )


def check_condition(latents: torch.Tensor, image, mask) -> tuple[torch.Tensor, torch.Tensor] | tuple[None, None]:
    """Validate image/mask against the latents; return (image, mask) ready for the decoder.

    The returned mask is float 0/1 of shape (B or 1, 1, 8h, 8w) in the image dtype.
    """
    if image is None and mask is None:
        return None, None
    if image is None or mask is None:
        missing = "image" if image is None else "mask"
        _fail(missing, "a tensor whenever the other of image/mask is given", "None")
    B, _, h, w = latents.shape
    H, W = 8 * h, 8 * w

    if not isinstance(image, torch.Tensor):
        _fail("image", "a torch.Tensor", type(image).__name__)
    if image.ndim != 4 or image.shape[1] != 3:
        _fail("image", "shape (B, 3, H, W)", f"shape {tuple(image.shape)}")
    if tuple(image.shape[-2:]) != (H, W):
        _fail("image", f"spatial size 8x the latents' = {H}x{W}", f"{image.shape[-2]}x{image.shape[-1]}")
    if image.shape[0] not in (1, B):
        _fail("image", f"batch 1 or {B} (the latent batch)", f"batch {image.shape[0]}")
    if not image.is_floating_point():
        _fail("image", "a float tensor in [-1, 1]", f"dtype {image.dtype}")
    if image.device != latents.device:
        _fail("image", f"a tensor on the latents' device {latents.device}", f"device {image.device}")
    if not bool(torch.isfinite(image).all()):
        _fail("image", "finite values in [-1, 1]", "NaN or Inf")
    lo, hi = float(image.min()), float(image.max())
    if lo < -1.0 - 1e-3 or hi > 1.0 + 1e-3:
        _fail("image", "values in [-1, 1] (x / 127.5 - 1 for 8-bit images)", f"values in [{lo:g}, {hi:g}]")

    if not isinstance(mask, torch.Tensor):
        _fail("mask", "a torch.Tensor", type(mask).__name__)
    if mask.ndim == 2:
        mask = mask[None, None]
    if mask.ndim != 4 or mask.shape[1] not in (1, 3):
        _fail("mask", "shape (B, 1, H, W), (B, 3, H, W) or (H, W)", f"shape {tuple(mask.shape)}")
    if tuple(mask.shape[-2:]) != (H, W):
        _fail("mask", f"spatial size {H}x{W} (the image's)", f"{mask.shape[-2]}x{mask.shape[-1]}")
    if mask.shape[0] not in (1, B):
        _fail("mask", f"batch 1 or {B} (the latent batch)", f"batch {mask.shape[0]}")
    if mask.device not in (image.device, torch.device("cpu")):
        _fail("mask", f"a tensor on the CPU or the image's device {image.device}", f"device {mask.device}")
    m = _binary_mask(mask.to(image.device))
    if m.shape[1] == 3:
        if not bool((m == m[:, :1]).all()):
            _fail("mask", "a 3-channel mask with identical channels (grayscale)", "channels that differ")
        m = m[:, :1]
    return standard_layout(image), standard_layout(m.to(image.dtype))
