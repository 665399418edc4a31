"""``region_stats="lowres"``: a region decode normalised with estimated image-wide GroupNorm statistics
(asymvq.models.region_stats), on the tiny seeded presets with and without ASUKA's branch.

It must beat the box's own statistics by a wide margin inside the hole (bench/results/decoder_region_stats.json:
tiny 256, mask 5 %: 5.4 -> 44.1 dB, tiny-asuka 6.5 -> 43.0 dB), keep every pixel outside the box the source, keep
each image's statistics its own in a batch, and be the full decode where the box is the image. With exact
outside moments (a "low-resolution" pass at stride 1) the merge gives the full decode's statistics, so only the
receptive-field cut is left. Bad values: ValueError naming region_stats.
"""
from __future__ import annotations

import math

import pytest
import torch

from asymvq.models.region import SCALE, mask_box
from asymvq.models.region_stats import MergedStats, lowres_factor, lowres_outside, merged_box_decode
from asymvq.models.sources import random_decoder

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def psnr(a, b, peak=2.0):
    mse = float(((a.double() - b.double()) ** 2).mean())
    return math.inf if mse == 0 else 10 * math.log10(peak * peak / mse)


def inputs(size=256, area=0.05, batch=1, seed=0, channels=4):
    """bench/decoder_region_stats.py's iid inputs and centred mask (off the latent grid)."""
    g = torch.Generator().manual_seed(seed)
    h = size // SCALE
    lat = torch.randn(batch, channels, h, h, generator=g)
    img = torch.rand(1, 3, size, size, generator=g) * 2 - 1
    side = int(round(math.sqrt(area) * size))
    mask = torch.zeros(1, 1, size, size)
    y0 = (size - side) // 2 + 3
    mask[..., y0:y0 + side, y0:y0 + side] = 1
    return lat, img, mask


@pytest.fixture(scope="module", params=["tiny", "tiny-asuka"])
def dec(request):
    return random_decoder(request.param, seed=0)


def test_lowres_statistics_beat_the_box_and_keep_the_source_outside(dec):
    lat, img, mask = inputs(channels=dec.config.latent_channels)
    with torch.inference_mode():
        full = dec(lat, img, mask)
        box = dec(lat, img, mask, region="mask", region_stats="box")
        low = dec(lat, img, mask, region="mask", region_stats="lowres")
        assert torch.equal(box, dec(lat, img, mask, region="mask"))  # "box" is the default
    hole = mask.expand_as(full) > 0.5
    p_box, p_low = psnr(box[hole], full[hole]), psnr(low[hole], full[hole])
    # measured: tiny 5.4 / 44.1 dB, tiny-asuka 6.5 / 43.0 dB
    assert p_box < 10, p_box
    assert p_low > 38 and p_low - p_box > 30, (p_box, p_low)
    y0, y1, x0, x1 = mask_box(mask, 4, 32, 32)
    outside = torch.ones_like(low, dtype=torch.bool)
    outside[:, :, SCALE * y0:SCALE * y1, SCALE * x0:SCALE * x1] = False
    assert torch.equal(low[outside], img.expand_as(low)[outside])  # Pre_error 0 there


def test_exact_outside_moments_give_the_full_decode(dec):
    # a stride-1 "low-resolution" pass is the full decode: merged with the box's own moments, every norm gets
    # the whole image's statistics, and only the receptive field cut by margin 4 is left: ~60 dB in the mask's
    # own box (the margin's band is the cut itself: the crop's border decodes without its neighbours)
    lat, img, mask = inputs(channels=dec.config.latent_channels)
    box = mask_box(mask, 4, 32, 32)
    with torch.inference_mode():
        full = dec(lat, img, mask)
        head = dec.decode_head(lat)
        outside = lowres_outside(dec, head, img, mask, box, 1, 0)
        crop = merged_box_decode(dec, head, img, mask, box, MergedStats(dec._ops, outside, (32, 32),
                                                                        (box[1] - box[0], box[3] - box[2])))
    y0, x0 = box[0], box[2]
    m0, m1, n0, n1 = mask_box(mask, 0, 32, 32)
    own = crop[:, :, SCALE * (m0 - y0):SCALE * (m1 - y0), SCALE * (n0 - x0):SCALE * (n1 - x0)]
    assert psnr(own, full[:, :, SCALE * m0:SCALE * m1, SCALE * n0:SCALE * n1]) > 55


def test_batch_keeps_each_images_statistics(dec):
    lat, img, mask = inputs(size=128, area=0.2, batch=2, channels=dec.config.latent_channels)
    with torch.inference_mode():
        both = dec(lat, img, mask, region="mask", region_stats="lowres")
        one = dec(lat[1:], img, mask, region="mask", region_stats="lowres")
    torch.testing.assert_close(both[1:], one, rtol=1e-4, atol=1e-4)
    assert psnr(both[:1], both[1:]) < 30  # different latents, different statistics


def test_whole_image_box_is_the_full_decode_and_empty_mask_the_source(dec):
    lat, img, mask = inputs(size=128, area=0.2, channels=dec.config.latent_channels)
    with torch.inference_mode():
        assert torch.equal(dec(lat, img, mask, region="mask", margin=100, region_stats="lowres"), dec(lat, img, mask))
        empty = dec(lat, img, torch.zeros_like(mask), region="mask", region_stats="lowres")
    assert torch.equal(empty, img)


def test_lowres_factor():
    assert lowres_factor(64, 64) == 4 and lowres_factor(128, 96) == 4  # 512 px and above: 1/16 of the up path
    assert lowres_factor(63, 64) == 2 and lowres_factor(32, 32) == 2


@pytest.mark.parametrize("kwargs, match", [
    (dict(region="mask", region_stats="image"), r"^region_stats: expected one of \('box', 'lowres'\)"),
    (dict(region="mask", region_stats=1), r"^region_stats: expected"),
    (dict(region_stats="lowres"), r"^region_stats: only with region="),
    (dict(region="mask", region_stats="lowres", tile=19), r"^region_stats: 'lowres' decodes the box in one piece"),
])
def test_bad_region_stats_are_refused(dec, kwargs, match):
    lat, img, mask = inputs(size=128, channels=dec.config.latent_channels)
    with pytest.raises(ValueError, match=match):
        dec(lat, img, mask, **kwargs)
