"""Which GroupNorm statistics a region decode normalises the box with (``region_stats=``).

``"box"`` (the default): the box is a decode of its own, so every GroupNorm (and the mid block's attention)
sees only the box. Inside the box that, not the margin, is what keeps the region decode away from the full
decode (docs/decoder.md, "The margin").

``"lowres"``: each norm normalises with an estimate of the *whole image's* statistics, for 0.08-0.10 of the full
decode's FLOPs on top of the box's at 512 (base, x1.5; a quarter at 256, where f = 2):

1. the head (post_quant_conv, conv_in, the mid block with its attention) runs on the whole latent, as in the
   full decode, and the box is cut from its output;
2. a plain decode of the whole image at 1/f resolution (``asymvq.models.region.lowres_factor``: f = 4, or 2 where
   the latent is under 64 pixels; the head's output, the image and the mask strided by f) records, for each up-path norm,
   the moments of its input *outside* the box grown by ``EXCLUDE_GROWTH``: what the box's own decode cannot see;
3. the box's decode merges, at each norm, its own moments (exact for the box's pixels) with those outside
   moments, weighted by the image's pixel count at that norm (Chan's formula): box pixels exact, the rest estimated.

Why the rest is taken only away from the box: at 1/f resolution the hole's influence reaches f times as far
across the image, so the low-resolution pixels just around the box are not like the full decode's there;
excluding a band of ``EXCLUDE_GROWTH`` latent pixels around the box (beyond the margin) is what brought
f = 4 from 22-29 dB to 33-40 dB in the hole on the 5 % masks at 512 (bench/results/decoder_region_stats.json;
box statistics: 3-5 dB). The low-resolution pass's own statistics alone (hole included) are worse than the box's
on small masks: the hole is a few low-resolution pixels there, mostly its border.

The options' vocabulary (``REGION_STATS``, ``check_region_stats``), the factor and the extra cost ``region="auto"``
counts for it (``lowres_extra``) are ``asymvq.models.region``'s, shared with the runtime and the engines.

Nothing here is exported: ``decode_core`` stays the export graph, and the exported engines decode the crop
as a plain decode (box statistics). Runs under ``ops.ops_override`` with tables that hand every op but the
norms to the decoder's own (so a Triton table keeps its blends and condition branch).
"""
from __future__ import annotations

import math

import torch

from .group_stats import Moments, norm_silu
from .ops import TorchOps, ops_override
from .region import SCALE, lowres_factor

EXCLUDE_GROWTH = 4  # latent pixels around the box that the low-resolution estimate leaves out ...
EXCLUDE_MIN_KEPT = 0.5  # ... where that keeps at least this share of the pixels outside the box


class _Delegating(TorchOps):
    """Every op but the norms through ``base`` (the decoder's own table)."""

    def __init__(self, base: TorchOps):
        self.base = base

    def blend(self, h, f, m):
        return self.base.blend(h, f, m)

    def condition_features(self, encoder, masked_image, valid):
        return self.base.condition_features(encoder, masked_image, valid)

    def condition_blend(self, encoder, image, mask, h):
        return self.base.condition_blend(encoder, image, mask, h)

    def blend_group_norm_silu(self, h, f, m, norm):
        return self.group_norm_silu(self.blend(h, f, m), norm)


def _outside(x: torch.Tensor, groups: int, rows, cols) -> Moments:
    """Moments of ``x`` outside rows [r0, r1) x columns [c0, c1): the bands above, below, left and right."""
    (r0, r1), (c0, c1) = rows, cols
    st = Moments()
    for part in (x[:, :, :r0], x[:, :, r1:], x[:, :, r0:r1, :c0], x[:, :, r0:r1, c1:]):
        st.add(part, groups)
    return st


class LowResPass(_Delegating):
    """The low-resolution pass: a plain decode (each norm by its own input) that records, per norm module, the
    moments outside ``grown`` (full latent pixels), or outside ``box`` where that keeps less than
    ``EXCLUDE_MIN_KEPT`` of the pixels outside ``box`` (a thin band or the corners: too few, and not the image)."""

    name = "region-stats-lowres"

    def __init__(self, base, grown, box, factor: int, latent_h: int):
        super().__init__(base)
        self.grown, self.box, self.factor, self.latent_h = grown, box, factor, latent_h
        self.outside: dict = {}

    def _outside(self, x, groups, box) -> Moments:
        s = x.shape[-2] / self.latent_h / self.factor  # this tensor's pixels per full-resolution latent pixel
        y0, y1, x0, x1 = box
        rows = (math.floor(y0 * s), min(math.ceil(y1 * s), x.shape[-2]))
        cols = (math.floor(x0 * s), min(math.ceil(x1 * s), x.shape[-1]))
        return _outside(x, groups, rows, cols)

    def group_norm_silu(self, x, norm):
        st, near = self._outside(x, norm.num_groups, self.grown), self._outside(x, norm.num_groups, self.box)
        if st.n < EXCLUDE_MIN_KEPT * near.n:
            st = near
        if st.n:
            self.outside[norm] = st
        return norm_silu(x, norm, None)


class MergedStats(_Delegating):
    """The box's decode: each norm by the box's own moments merged with the recorded outside ones, the outside
    counted at the box's resolution (the image's pixels minus the box's)."""

    name = "region-stats-merged"

    def __init__(self, base, outside: dict, image_hw, box_hw):
        super().__init__(base)
        self.outside, self.image_hw, self.box_hw = outside, image_hw, box_hw

    def group_norm_silu(self, x, norm):
        st = Moments()
        st.add(x, norm.num_groups)
        out = self.outside.get(norm)
        if out is not None:
            per_pixel = st.n // (x.shape[-2] * x.shape[-1])  # channels per group
            s = x.shape[-2] // self.box_hw[0]  # pixels per latent pixel
            n = per_pixel * (self.image_hw[0] * s) * (self.image_hw[1] * s) - st.n
            mean, var = out.finish()
            st.add_moments(n, mean, var * n)
        return norm_silu(x, norm, st.finish())


def lowres_outside(dec, head, image, mask, box, factor: int, growth: int) -> dict:
    """Step 2: norm module -> ``Moments`` of its input outside ``box`` grown by ``growth`` (or, where that leaves
    nothing, outside ``box``), from a plain decode of ``head`` (the whole latent's), ``image`` and ``mask`` strided
    by ``factor``."""
    h, w = head.shape[-2:]
    hl, wl = h // factor, w // factor
    y0, y1, x0, x1 = box
    grown = (max(y0 - growth, 0), min(y1 + growth, h), max(x0 - growth, 0), min(x1 + growth, w))
    rec = LowResPass(dec._ops, grown, box, factor, hl)
    with ops_override(rec):
        dec.decode_up(head[:, :, :hl * factor:factor, :wl * factor:factor],
                      image[:, :, :SCALE * hl * factor:factor, :SCALE * wl * factor:factor],
                      mask[:, :, :SCALE * hl * factor:factor, :SCALE * wl * factor:factor])
    return rec.outside


def merged_box_decode(dec, head, image, mask, box, table: MergedStats) -> torch.Tensor:
    """Step 3: the up path on ``box`` of ``head`` (the whole latent's), its norms run by ``table``."""
    y0, y1, x0, x1 = box
    pix = (slice(None), slice(None), slice(SCALE * y0, SCALE * y1), slice(SCALE * x0, SCALE * x1))
    with ops_override(table):
        return dec.decode_up(head[:, :, y0:y1, x0:x1], image[pix], mask[pix])


def lowres_stats_decode(dec, latents, image, mask, box) -> torch.Tensor:
    """The box (latent pixels y0, y1, x0, x1) of ``latents`` decoded with ``region_stats="lowres"``: (B, 3, 8 box_h,
    8 box_w). ``latents``/``image``/``mask``: the whole image's (B or 1, ., 8h, 8w), not the box's crops
    (``asymvq.models.region.decode_box_with_context``)."""
    h, w = latents.shape[-2:]
    y0, y1, x0, x1 = box
    if (y0, y1, x0, x1) == (0, h, 0, w):  # the box is the image: its own statistics are the image's
        return dec.decode_core(latents, image, mask)
    head = dec.decode_head(latents)
    outside = lowres_outside(dec, head, image, mask, box, lowres_factor(h, w), EXCLUDE_GROWTH)
    return merged_box_decode(dec, head, image, mask, box, MergedStats(dec._ops, outside, (h, w), (y1 - y0, x1 - x0)))
