"""Tiled decoding with image-wide GroupNorm statistics, and decoding only the masked region.

Two opt-in ways to run ``AsymmetricDecoder`` that ``forward`` / ``decode_scaled`` route here
when ``tile=`` or ``region=`` is given (docs/decoder.md, "Tiled and region decoding").

Tiled (``tile=N, overlap=M``, latent pixels)
    The mid block (two ResBlocks around a *global* self-attention over the H/8 latent) runs once
    on the whole latent, exactly as in the full decode: it is cheap at latent resolution and
    attention cannot be tiled exactly. Then the up path (where all the memory is) runs tile by
    tile over N x N latent windows that step by N - M, each with its crop of the image and mask
    for the condition branch. Neighbouring windows share M latent pixels: the outer M/2 of each
    window is context for the receptive field, the inner part is output, cross-faded with the
    neighbour over ``FEATHER`` latent pixels around the middle of the shared band.

    GroupNorm is what makes tiles disagree: a tile normalised by its own statistics is shifted in
    tone against its neighbour. Here every GroupNorm of the up path is normalised with statistics
    of the *whole image*: count, mean and M2 of its input over the part of the image each tile
    owns (a partition), merged tile by tile with Chan's formula in float64. A norm's statistics
    depend on every earlier norm's over the whole image, and a decoder normalised with slightly
    wrong fixed statistics amplifies the error (measured: one statistics pass with per-tile
    statistics, then an output pass, -7 dB; iterating diverged), so there is one statistics pass
    per up-path norm (``norm_count``), pass j running each tile up to norm j only, then the output
    pass. Memory stays bounded by the tile; the price is compute (docs/decoder.md). With the
    default overlap (2 x ``receptive_halo``) the result equals the full decode to float rounding.

Region (``region="mask", margin=K``, latent pixels)
    Decode only the bounding box of the mask (union over the batch), grown by K latent pixels
    of unmasked context on each side and clipped to the image, as a decode of its own (its
    GroupNorm statistics are the box's), and take every pixel outside the box from the source
    image. Pixels outside the box are exactly the source (Pre_error 0 there by construction).
    An empty mask decodes nothing and returns the source image unchanged.

Nothing here is traced or exported: ``decode_core`` stays the export graph. Only the torch
path tiles (any ``ops`` table for the blends and the condition branch; GroupNorm+SiLU here is
plain torch so that it can take outside statistics).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .condition import LAYER_STRIDE

SCALE = 8  # image pixels per latent pixel
# Latent pixels of cross-fade around the middle of the shared band. 0: a cut, exact when the
# overlap covers the receptive field on both sides (2 x receptive_halo, the default).
FEATHER = 0
# Region mode: latent pixels of unmasked context around the mask's box (measured; docs/decoder.md).
DEFAULT_MARGIN = 4
REGIONS = ("mask",)


# -- arguments -----------------------------------------------------------------------------------
def receptive_halo(config) -> int:
    """Latent pixels of context a tile edge needs so that the pixels it keeps are exact.

    Counted back from an output pixel through the up path, in latent pixels (1 at H/8, 1/2 at
    H/4, ...): 2 (L+1) 3x3 convs per level at H/8, H/4, H/2 and H (L = layers_per_block), the
    upsample convs at H/4, H/2 and H, and conv_out: 3.75 (L+1) + 1, rounded up. Measured as
    the distance beyond which a cropped decode equals the full one (tiny: 9 latent pixels,
    error 2e-6 there, 1e-3 at 7, 0.3 at 3).
    """
    return math.ceil(3.75 * (config.layers_per_block + 1) + 1)


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def check_tiling(tile, overlap, config) -> tuple[int, int]:
    """(tile, overlap) validated; overlap defaults to 2 x the receptive halo (capped below the tile)."""
    halo = receptive_halo(config)
    min_tile = 2 * halo + 1
    if not _is_int(tile) or tile < min_tile:
        raise ValueError(
            f"tile: expected an integer >= {min_tile} latent pixels for this decoder (its receptive field "
            f"needs {halo} latent pixels of context on each side of a tile, plus output), got {tile!r}"
        )
    if overlap is None:
        overlap = 2 * halo
    if not _is_int(overlap) or overlap < 0 or overlap >= tile:
        raise ValueError(
            f"overlap: expected an integer in [0, tile) = [0, {tile}) latent pixels shared by neighbouring "
            f"tiles (default {2 * halo}: the receptive field, exact), got {overlap!r}"
        )
    return tile, overlap


def check_region(region, margin) -> tuple[str, int]:
    if region not in REGIONS:
        raise ValueError(f"region: expected one of {REGIONS} or None (decode everything), got {region!r}")
    if margin is None:
        margin = DEFAULT_MARGIN
    if not _is_int(margin) or margin < 0:
        raise ValueError(
            f"margin: expected an integer >= 0 (latent pixels of context around the mask's box; "
            f"default {DEFAULT_MARGIN}), got {margin!r}"
        )
    return region, margin


# -- tile geometry ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Span:
    """One tile along one axis, in latent pixels: the window [start, stop) it decodes, the part
    [own0, own1) it owns (a partition of the axis, used for statistics), and its blend weights."""

    start: int
    stop: int
    own0: int
    own1: int
    first: bool
    last: bool


def spans(size: int, tile: int, overlap: int) -> list[Span]:
    """Windows of ``tile`` stepping by ``tile - overlap``; the last one ends at ``size``."""
    if size <= tile:
        return [Span(0, size, 0, size, True, True)]
    step = tile - overlap
    starts = list(range(0, size - tile, step)) + [size - tile]
    cuts = [0] + [(b + a + tile) // 2 for a, b in zip(starts, starts[1:])] + [size]
    n = len(starts)
    return [Span(s, s + tile, cuts[i], cuts[i + 1], i == 0, i == n - 1) for i, s in enumerate(starts)]


def _ramp(span: Span, scale: int, feather: int, device, dtype) -> torch.Tensor:
    """Weights along one axis at ``scale`` pixels per latent pixel: 1 on the owned part, linear
    cross-fades of ``feather`` latent pixels centred on each cut; neighbours' weights sum to 1."""
    n = (span.stop - span.start) * scale
    x = torch.arange(n, device=device, dtype=torch.float64) + 0.5 + span.start * scale
    w = torch.ones(n, device=device, dtype=torch.float64)
    f = feather * scale
    if not span.first:
        c = span.own0 * scale
        w = w * ((x - (c - f / 2)) / f).clamp(0, 1) if f else w * (x >= c)
    if not span.last:
        c = span.own1 * scale
        w = w * (((c + f / 2) - x) / f).clamp(0, 1) if f else w * (x < c)
    return w.to(dtype)


# -- GroupNorm with outside statistics -----------------------------------------------------------
class _Stop(Exception):
    """Ends a tile's run at the norm whose statistics the pass collects."""


class _Stats:
    """One norm's (count, mean, M2) per (batch, group) in float64, merged tile by tile with Chan's formula."""

    def __init__(self):
        self.n, self.mean, self.m2 = 0, None, None

    def add(self, x: torch.Tensor, groups: int) -> None:
        xg = x.reshape(x.shape[0], groups, -1)
        n = xg.shape[-1]
        if n == 0:
            return
        var, mean = torch.var_mean(xg.float(), dim=-1, correction=0)
        mean, m2 = mean.double(), var.double() * n
        if self.mean is None:
            self.n, self.mean, self.m2 = n, mean, m2
            return
        na, tot = self.n, self.n + n
        delta = mean - self.mean
        self.mean = self.mean + delta * (n / tot)
        self.m2 = self.m2 + m2 + delta * delta * (na * n / tot)
        self.n = tot

    def finish(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, biased variance), float64, (B, groups): what torch's GroupNorm computes."""
        return self.mean, self.m2 / self.n


class _TileNorms:
    """GroupNorm+SiLU for one tile: norm i < len(stats) normalises with the image-wide
    ``stats[i]``; with ``collect``, norm len(stats) adds its input over the tile's owned part
    to ``collect`` and stops the run. Without stats at all (``per_tile=True``) every norm uses
    the tile's own statistics (diffusers' tiling; for comparison only)."""

    def __init__(self, stats, collect: _Stats | None, owned: tuple[slice, slice], window: tuple[int, int],
                 per_tile: bool = False):
        self.stats, self.collect, self.owned, self.window, self.per_tile = stats, collect, owned, window, per_tile
        self.i = 0

    def __call__(self, x: torch.Tensor, norm: torch.nn.GroupNorm) -> torch.Tensor:
        i, self.i = self.i, self.i + 1
        b, c = x.shape[:2]
        g = norm.num_groups
        if self.collect is not None and i == len(self.stats):
            s = x.shape[-2] // self.window[0]  # pixels per latent pixel at this level
            ys, xs = self.owned
            self.collect.add(x[:, :, ys.start * s:ys.stop * s, xs.start * s:xs.stop * s], g)
            raise _Stop
        xg = x.reshape(b, g, -1)
        if self.per_tile:
            var, mean = torch.var_mean(xg.float(), dim=-1, correction=0)
        else:
            mean, var = (t.float() for t in self.stats[i])
        rstd = torch.rsqrt(var + norm.eps)
        y = ((xg.float() - mean[..., None]) * rstd[..., None]).to(x.dtype).reshape(x.shape)
        y = y * norm.weight.view(1, c, 1, 1) + norm.bias.view(1, c, 1, 1)
        return F.silu(y)


def norm_count(dec) -> int:
    """GroupNorms on the up path (the ones tiling must synchronise): 2 per ResBlock, plus conv_norm_out."""
    return 2 * sum(len(up.resnets) for up in dec.up_blocks) + 1


# -- the up path of one tile ------------------------------------------------------------------------
def _resnet(block, x, norm_silu):
    h = block.conv1(norm_silu(x, block.norm1))
    h = block.conv2(norm_silu(h, block.norm2))
    if block.conv_shortcut is not None:
        x = block.conv_shortcut(x)
    return x + h


def _up_path(dec, h, image, mask, norm_silu):
    """``decode_core`` after the mid block, with ``norm_silu`` for every GroupNorm+SiLU (same order)."""
    ops = dec.ops
    feats = None
    if image is not None:
        h, feats = ops.condition_blend(dec.condition_encoder, image, mask, h)
    for k, up in enumerate(dec.up_blocks):
        for r in up.resnets:
            h = _resnet(r, h, norm_silu)
        if up.upsamplers is not None:
            h = up.upsamplers[0](h)
        if feats is not None and k < 3:  # decoder.BLEND_POINTS: condition layer 3 - k after level k
            layer = 3 - k
            stride = LAYER_STRIDE[layer]
            h = ops.blend(h, feats[layer], dec.condition_encoder.level_mask(mask, stride))
    if feats is not None:
        h = ops.blend(h, feats[0], mask)
    return dec.conv_out(norm_silu(h, dec.conv_norm_out))


def _mid(dec, latents):
    if dec.post_quant_conv is not None:
        latents = dec.post_quant_conv(latents)
    h = dec.conv_in(latents)
    h = dec.mid_block(h)
    return h.to(dec.up_blocks[0].resnets[0].conv1.weight.dtype)


def tiled_decode(dec, latents, image, mask, tile: int, overlap: int, *, feather: int = FEATHER,
                 per_tile_norm: bool = False) -> torch.Tensor:
    """Decode VAE-space ``latents`` (checked) tile by tile; see the module doc.

    One statistics pass per up-path GroupNorm (``norm_count``), each running every tile up to
    that norm only, then the output pass. ``per_tile_norm=True`` skips them and normalises each
    tile by itself (diffusers' tiling; kept to measure what the statistics buy).
    """
    B, _, h, w = latents.shape
    ys, xs = spans(h, tile, overlap), spans(w, tile, overlap)
    if len(ys) == len(xs) == 1:  # one tile is the whole image: the full decode, exactly
        return dec.decode_core(latents, image, mask)
    hmid = _mid(dec, latents)
    feather = min(feather, overlap // 2)
    out_dtype = dec.conv_out.weight.dtype

    def crop(t, sy, sx, s):
        if t is None:
            return None
        return t[:, :, sy.start * s:sy.stop * s, sx.start * s:sx.stop * s]

    def run(stats, collect, sy, sx):
        owned = (slice(sy.own0 - sy.start, sy.own1 - sy.start), slice(sx.own0 - sx.start, sx.own1 - sx.start))
        norms = _TileNorms(stats, collect, owned, (sy.stop - sy.start, sx.stop - sx.start), per_tile=per_tile_norm)
        return _up_path(dec, crop(hmid, sy, sx, 1), crop(image, sy, sx, SCALE), crop(mask, sy, sx, SCALE), norms)

    stats: list = []
    if not per_tile_norm:
        for _ in range(norm_count(dec)):
            collect = _Stats()
            for sy in ys:
                for sx in xs:
                    try:
                        run(stats, collect, sy, sx)
                    except _Stop:
                        pass
            stats.append(collect.finish())

    out = None
    for sy in ys:
        wy = _ramp(sy, SCALE, feather, latents.device, out_dtype)
        for sx in xs:
            t = run(stats, None, sy, sx)
            if out is None:
                out = t.new_zeros(t.shape[0], t.shape[1], SCALE * h, SCALE * w)
            wx = _ramp(sx, SCALE, feather, latents.device, out_dtype)
            y0, x0 = sy.start * SCALE, sx.start * SCALE
            out[:, :, y0:y0 + t.shape[-2], x0:x0 + t.shape[-1]].addcmul_(t, wy.view(-1, 1) * wx.view(1, -1))
    return out


# -- region decoding --------------------------------------------------------------------------------
def mask_box(mask: torch.Tensor, margin: int, h: int, w: int) -> tuple[int, int, int, int] | None:
    """Latent-pixel box (y0, y1, x0, x1) around every hole pixel of the (B or 1, 1, 8h, 8w) mask,
    grown by ``margin`` and clipped to the latent; None when the mask has no hole."""
    rows = (mask > 0.5).any(dim=0).any(dim=0).any(dim=1)
    cols = (mask > 0.5).any(dim=0).any(dim=0).any(dim=0)
    if not bool(rows.any()):
        return None
    r = torch.nonzero(rows).flatten()
    c = torch.nonzero(cols).flatten()
    y0, y1 = int(r[0]) // SCALE, math.ceil((int(r[-1]) + 1) / SCALE)
    x0, x1 = int(c[0]) // SCALE, math.ceil((int(c[-1]) + 1) / SCALE)
    return max(y0 - margin, 0), min(y1 + margin, h), max(x0 - margin, 0), min(x1 + margin, w)


def region_decode(dec, latents, image, mask, margin: int, tile: int | None = None,
                  overlap: int | None = None) -> torch.Tensor:
    """Decode the mask's box grown by ``margin`` (tiled when ``tile`` is given); the rest is ``image``."""
    B, _, h, w = latents.shape
    out_dtype = dec.conv_out.weight.dtype
    out = image.to(out_dtype).expand(B, -1, -1, -1).clone()
    box = mask_box(mask, margin, h, w)
    if box is None:
        return out
    y0, y1, x0, x1 = box
    lat = latents[:, :, y0:y1, x0:x1]
    img = image[:, :, y0 * SCALE:y1 * SCALE, x0 * SCALE:x1 * SCALE]
    msk = mask[:, :, y0 * SCALE:y1 * SCALE, x0 * SCALE:x1 * SCALE]
    if tile is not None:
        dec_box = tiled_decode(dec, lat, img, msk, tile, overlap)
    else:
        dec_box = dec.decode_core(lat, img, msk)
    out[:, :, y0 * SCALE:y1 * SCALE, x0 * SCALE:x1 * SCALE] = dec_box
    return out



def decode_modes(dec, latents, image, mask, *, tile=None, overlap=None, region=None, margin=None) -> torch.Tensor:
    """What ``AsymmetricDecoder.forward`` runs when any of tile/overlap/region/margin is given
    (inputs already checked and cast)."""
    if tile is None and overlap is not None:
        raise ValueError(f"overlap: only with tile=N (latent pixels), got overlap={overlap!r} without a tile")
    if region is None and margin is not None:
        raise ValueError(f"margin: only with region='mask', got margin={margin!r} without a region")
    if tile is not None:
        tile, overlap = check_tiling(tile, overlap, dec.config)
    if region is not None:
        region, margin = check_region(region, margin)
        if image is None:
            raise ValueError("region: 'mask' decodes around the mask; pass image and mask (or leave region=None)")
        return region_decode(dec, latents, image, mask, margin, tile, overlap)
    return tiled_decode(dec, latents, image, mask, tile, overlap)
