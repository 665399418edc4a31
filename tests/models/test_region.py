"""Region decoding's geometry and cost model (``asymvq.models.region``): the crop snapped to an engine's sizes,
the choice of region="auto", and the model's constants refitted from the measured curves they came from."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from asymvq.models.region import (
    AUTO_MIN_SPEEDUP,
    REGION_MODEL,
    REGION_TIME_FIT,
    RegionModel,
    choose_region,
    decode_box,
    mask_box,
    predicted_speedup,
    snap_box,
)
from asymvq.models.sources import random_decoder

ROOT = Path(__file__).resolve().parents[2]


def _mask(h, w, y0, y1, x0, x1):
    m = torch.zeros(1, 1, 8 * h, 8 * w)
    m[..., y0:y1, x0:x1] = 1
    return m


def test_the_cost_model_is_the_fit_of_the_measured_region_points():
    data = json.loads((ROOT / "bench" / "results" / "decoder_scaling.json").read_text())
    points = [(r["box_area"], 1 / r["speedup"]) for p in data["presets"] for r in p["region"]
              if r.get("measured") and r.get("speedup")]
    assert len(points) >= 10
    x, y = np.array(points).T
    a, b = np.linalg.lstsq(np.stack([np.ones_like(x), x], 1), y, rcond=None)[0]
    assert REGION_TIME_FIT == pytest.approx((a, b), abs=1e-3)
    assert predicted_speedup(1.0) == pytest.approx(1 / (a + b), rel=1e-3)


def test_snap_grows_to_the_smallest_crop_inside_the_image_and_refuses_above_the_largest():
    assert snap_box((5, 7, 7, 9), 12, 16, None) == (5, 7, 7, 9)
    assert snap_box((5, 7, 7, 9), 12, 16, ((6, 10), (6, 10))) == (3, 9, 5, 11)  # around its centre
    assert snap_box((0, 2, 14, 16), 12, 16, ((6, 10), (6, 10))) == (0, 6, 10, 16)  # shifted back inside
    assert snap_box((0, 3, 0, 3), 8, 8, ((8, 8), (8, 8))) == (0, 8, 0, 8)  # a static engine: its one size
    with pytest.raises(ValueError, match=r"^region: the mask's box is 11 latent pixels along the width .* above the "
                                         r"10 that the x engine accepts; .*needs a dynamic engine"):
        snap_box((0, 4, 0, 11), 12, 16, ((6, 10), (6, 10)), "the x engine")
    with pytest.raises(ValueError, match=r"^region: .* accepts at least 16 latent pixels along the height, the image "
                                         r"has 12"):
        snap_box((0, 4, 0, 4), 12, 16, ((16, 16), (1, 16)))


def test_auto_decodes_the_box_when_it_pays_and_the_whole_image_when_not():
    small = choose_region("auto", _mask(16, 16, 40, 60, 40, 60), 1, 16, 16)
    assert small.decodes_box and small.speedup >= AUTO_MIN_SPEEDUP and small.describe().startswith("box 4:9,4:9")
    large = choose_region("auto", _mask(16, 16, 4, 120, 4, 120), 0, 16, 16)
    assert not large.decodes_box and not large.empty and large.speedup < AUTO_MIN_SPEEDUP
    assert large.describe().startswith("full (auto: box share 0.88")
    forced = choose_region("mask", _mask(16, 16, 4, 120, 4, 120), 0, 16, 16)
    assert forced.decodes_box  # "mask" always decodes the box
    empty = choose_region("auto", torch.zeros(1, 1, 128, 128), 4, 16, 16)
    assert empty.empty and not empty.decodes_box and empty.describe().startswith("none")
    # a box no engine size fits: "auto" falls back to the whole image, "mask" says why it cannot
    too_big = _mask(16, 16, 0, 100, 0, 8)
    assert not choose_region("auto", too_big, 0, 16, 16, ((1, 8), (1, 16))).decodes_box
    with pytest.raises(ValueError, match="needs a dynamic engine"):
        choose_region("mask", too_big, 0, 16, 16, ((1, 8), (1, 16)))


def test_auto_decides_with_the_model_it_is_given():
    """A model other than the package's (what an engines manifest may record): its fit and its threshold."""
    mask = _mask(16, 16, 40, 60, 40, 60)
    ours = choose_region("auto", mask, 1, 16, 16)
    assert ours == choose_region("auto", mask, 1, 16, 16, model=REGION_MODEL) and ours.decodes_box
    strict = RegionModel(auto_min_speedup=ours.speedup * 1.01)
    refused = choose_region("auto", mask, 1, 16, 16, model=strict)
    assert not refused.decodes_box and refused.speedup == ours.speedup
    assert refused.describe().endswith(f"predicted {ours.speedup:.2f}x < {strict.auto_min_speedup:g}x, box statistics)")
    slow = RegionModel(time_fit=(0.9, 0.1))  # a region decode that costs 90 % of the full one whatever its box
    assert not choose_region("auto", mask, 1, 16, 16, model=slow).decodes_box
    assert choose_region("mask", mask, 1, 16, 16, model=slow).decodes_box  # "mask" does not weigh it


def test_decoder_auto_is_the_full_decode_or_the_region_decode():
    dec = random_decoder("tiny")
    g = torch.Generator().manual_seed(0)
    lat, img = torch.randn(1, 4, 12, 12, generator=g), torch.rand(1, 3, 96, 96, generator=g) * 2 - 1
    with torch.inference_mode():
        big = _mask(12, 12, 2, 94, 2, 94)
        assert torch.equal(dec(lat, img, big, region="auto"), dec(lat, img, big))
        small = _mask(12, 12, 30, 50, 30, 50)
        assert torch.equal(dec(lat, img, small, region="auto", margin=1), dec(lat, img, small, region="mask", margin=1))


def test_decode_box_pastes_the_crop_on_the_source():
    img = torch.rand(1, 3, 32, 32)
    lat = torch.zeros(2, 4, 4, 4)
    out = decode_box(lambda la, im, ma: torch.full((2, 3, 16, 8), 5.0), lat, img, torch.zeros(1, 1, 32, 32),
                     (1, 3, 2, 3), torch.float32)
    assert out.shape == (2, 3, 32, 32) and (out[..., 8:24, 16:24] == 5).all()
    out[..., 8:24, 16:24] = img.expand(2, -1, -1, -1)[..., 8:24, 16:24]
    assert torch.equal(out, img.expand(2, -1, -1, -1))
    assert torch.equal(decode_box(None, lat, img, None, None, torch.float32), img.expand(2, -1, -1, -1))


def test_a_bf16_region_decode_leaves_the_fp32_source_unrounded_outside_the_box():
    """The decoder casts its inputs to bf16; the pixels outside the box are the source as given (exact), not
    its bf16 rounding (which was up to 4e-3 off)."""
    dec = random_decoder("tiny", dtype="bf16")
    g = torch.Generator().manual_seed(0)
    z, image = torch.randn(1, 4, 16, 16, generator=g), torch.rand(1, 3, 128, 128, generator=g) * 2 - 1
    mask = torch.zeros(1, 1, 128, 128)
    mask[..., 40:72, 48:80] = 1
    with torch.inference_mode():
        y = dec(z, image, mask, region="mask", margin=1)
    y0, y1, x0, x1 = mask_box(mask, 1, 16, 16)
    outside = torch.ones_like(y, dtype=torch.bool)
    outside[..., 8 * y0:8 * y1, 8 * x0:8 * x1] = False
    assert y.dtype == torch.float32 and torch.equal(y[outside], image.expand_as(y)[outside])
    assert not torch.equal(image.bfloat16().float(), image)  # the rounding this guards against is real
