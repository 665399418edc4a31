import math

import pytest
import torch

from asymvq import preservation_error


def test_preservation_error_counts_only_kept_pixels():
    source = torch.zeros(2, 3, 8, 16)
    mask = torch.zeros(2, 1, 8, 16)
    mask[:, :, :, :8] = 1  # left half is the hole
    output = source.clone()
    output[:, :, :, :8] = 1.0  # anything inside the hole is free
    output[1, :, :, 8:] = 2 / 255  # image 1: kept half off by 2/255 in [-1, 1] units = one 8-bit level
    err = preservation_error(output, source, mask)
    assert err.shape == (2,)
    assert err[0].item() == 0.0
    assert err[1].item() == pytest.approx(1.0, rel=1e-5)  # (2/255 * 127.5)^2 = 1 in 8-bit units


def test_preservation_error_value_range_and_broadcast():
    g = torch.Generator().manual_seed(0)
    src01 = torch.rand(1, 3, 8, 8, generator=g)
    out01 = (src01 + 0.1).clamp(0, 1)
    mask = torch.zeros(1, 1, 8, 8)
    a = preservation_error(out01.expand(3, -1, -1, -1), src01, mask, value_range=(0.0, 1.0))
    b = preservation_error(out01 * 2 - 1, src01 * 2 - 1, mask)
    assert torch.allclose(a, b.expand(3), rtol=1e-5)
    expected = ((out01 - src01) ** 2).mean().item() * 255**2
    assert b.item() == pytest.approx(expected, rel=1e-4)


def test_all_hole_mask_gives_nan_and_bad_mask_is_refused():
    x = torch.zeros(1, 3, 8, 8)
    assert math.isnan(preservation_error(x, x, torch.ones(1, 1, 8, 8)).item())
    with pytest.raises(ValueError, match="^mask: "):
        preservation_error(x, x, torch.full((1, 1, 8, 8), 0.5))
