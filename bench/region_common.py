"""What the region-decode accuracy benchmarks share (``decoder_region_margin.py``, ``decoder_region_stats.py``): the
centred mask off the latent grid and the per-area loop around the full decode they compare against.

Imported by those scripts (``python bench/<name>.py`` puts this folder on the path).
"""
from __future__ import annotations

import math
import time

import torch

from asymvq.models.ops import ops_override
from asymvq.models.region import SCALE, mask_box


def centred_mask(size: int, area: float) -> torch.Tensor:
    side = int(round(math.sqrt(area) * size))
    m = torch.zeros(1, 1, size, size)
    y0 = (size - side) // 2 + 3  # not on the latent grid
    m[..., y0:y0 + side, y0:y0 + side] = 1
    return m


def area_decodes(dec, lat, img, head, areas, recorder):
    """For each mask area (``centred_mask``): ``(area, mask, full, full_s, rec, hole, own)``: the full decode and
    its seconds, the op table ``recorder()`` after it saw the up path decode the whole ``head`` (checked to give
    the full decode), the hole and the mask's own box in pixels (margin 0). Run it under ``torch.inference_mode()``."""
    size = img.shape[-1]
    h = size // SCALE
    for area in areas:
        mask = centred_mask(size, area)
        t0 = time.perf_counter()
        full = dec.decode_core(lat, img, mask)
        full_s = time.perf_counter() - t0
        rec = recorder()
        with ops_override(rec):
            again = dec.decode_up(head, img, mask)
        # float rounding scales with the image's magnitude (seeded weights on smooth inputs reach |x| ~ 8)
        tol = 1e-4 * max(1.0, float(full.abs().max()))
        assert torch.allclose(again, full, rtol=0, atol=tol), "the recording op table changed the full decode"
        hole = mask.expand_as(full) > 0.5
        b0 = mask_box(mask, 0, h, h)
        own = (slice(None), slice(None), slice(SCALE * b0[0], SCALE * b0[1]), slice(SCALE * b0[2], SCALE * b0[3]))
        yield area, mask, full, full_s, rec, hole, own
