"""FLUX's packed latents: the transformer sees each 2x2 patch of the 16-channel latent as one token.

``FluxPipeline`` / ``FluxFillPipeline(output_type="latent")`` return latents packed as
(B, (h/2)*(w/2), 64), h and w the latent size. ``unpack_flux_latents`` gives the (B, 16, h, w)
diffusion-space latents every decoder here takes (``AsymmetricDecoder.decode_scaled``); the same
index order as diffusers' ``FluxPipeline._unpack_latents`` (tests compare them), written here so a
user needs neither a private diffusers method nor its ``vae_scale_factor`` argument.
"""
from __future__ import annotations

import torch

from .latent_space import VAE_SCALE_FACTOR

PATCH = 2  # latent pixels per token side


def _latent_size(pixels: int, name: str) -> int:
    if type(pixels) is not int or pixels < VAE_SCALE_FACTOR * PATCH:
        raise ValueError(f"{name}: expected the image {name} in pixels (an integer >= {VAE_SCALE_FACTOR * PATCH}), "
                         f"got {pixels!r}")
    return PATCH * (pixels // (VAE_SCALE_FACTOR * PATCH))  # what the FLUX pipelines generate for this size


def unpack_flux_latents(latents: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(B, tokens, 4C) packed latents of an image of ``height`` x ``width`` pixels -> (B, C, h, w)."""
    h, w = _latent_size(height, "height"), _latent_size(width, "width")
    if not isinstance(latents, torch.Tensor) or latents.ndim != 3 or latents.shape[-1] % (PATCH * PATCH):
        got = f"shape {tuple(latents.shape)}" if isinstance(latents, torch.Tensor) else type(latents).__name__
        raise ValueError(f"latents: expected packed FLUX latents (B, tokens, 4*C), got {got}")
    b, tokens, packed = latents.shape
    if tokens != (h // PATCH) * (w // PATCH):
        raise ValueError(f"latents: {tokens} tokens do not make a {height}x{width} image "
                         f"(expected {(h // PATCH) * (w // PATCH)}: one per 2x2 latent patch of {h}x{w})")
    c = packed // (PATCH * PATCH)
    x = latents.reshape(b, h // PATCH, w // PATCH, c, PATCH, PATCH)
    return x.permute(0, 3, 1, 4, 2, 5).reshape(b, c, h, w)


def pack_flux_latents(latents: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) -> (B, (h/2)*(w/2), 4C), the inverse of ``unpack_flux_latents``."""
    if not isinstance(latents, torch.Tensor) or latents.ndim != 4 or latents.shape[-1] % PATCH or latents.shape[-2] % PATCH:
        got = f"shape {tuple(latents.shape)}" if isinstance(latents, torch.Tensor) else type(latents).__name__
        raise ValueError(f"latents: expected (B, C, h, w) with even h and w, got {got}")
    b, c, h, w = latents.shape
    x = latents.reshape(b, c, h // PATCH, PATCH, w // PATCH, PATCH)
    return x.permute(0, 2, 4, 1, 3, 5).reshape(b, (h // PATCH) * (w // PATCH), c * PATCH * PATCH)


def pack_flux_mask(mask: torch.Tensor) -> torch.Tensor:
    """(B, 1, 8h, 8w) 0/1 mask -> (B, (h/2)*(w/2), 256): FLUX.1 Fill's mask channels. Each latent cell's
    8x8 pixels become 64 channels, then packed 2x2 like the latents (diffusers' ``prepare_mask_latents``)."""
    if not isinstance(mask, torch.Tensor) or mask.ndim != 4 or mask.shape[1] != 1 \
            or mask.shape[-1] % (VAE_SCALE_FACTOR * PATCH) or mask.shape[-2] % (VAE_SCALE_FACTOR * PATCH):
        got = f"shape {tuple(mask.shape)}" if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise ValueError(f"mask: expected (B, 1, H, W) with H and W multiples of {VAE_SCALE_FACTOR * PATCH}, got {got}")
    b, _, hh, ww = mask.shape
    f = VAE_SCALE_FACTOR
    x = mask[:, 0].reshape(b, hh // f, f, ww // f, f).permute(0, 2, 4, 1, 3).reshape(b, f * f, hh // f, ww // f)
    return pack_flux_latents(x)


def flux_image_ids(h: int, w: int, *, device=None, dtype=torch.float32) -> torch.Tensor:
    """The RoPE position ids of the (h/2) x (w/2) image tokens of an h x w latent: (tokens, 3) rows of
    (0, row, column), diffusers' ``_prepare_latent_image_ids``."""
    ids = torch.zeros(h // PATCH, w // PATCH, 3)
    ids[..., 1] += torch.arange(h // PATCH)[:, None]
    ids[..., 2] += torch.arange(w // PATCH)[None, :]
    return ids.reshape(-1, 3).to(device=device, dtype=dtype)
