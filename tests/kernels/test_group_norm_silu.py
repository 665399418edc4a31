"""group_norm_silu against F.silu(F.group_norm(...)) in float64: odd sizes, group widths that
are not powers of two, split statistics, activations with a large mean (Welford), the fused
blend. float64 because torch's own fp32 GroupNorm loses digits on such activations."""
import pytest
import torch
from kernel_cases import DEVICE, DTYPES, activation, assert_close, hole_mask

from asymvq.kernels import group_norm_silu, group_norm_silu_reference


def _params(c, dtype):
    return torch.randn(c).to(DEVICE, dtype), torch.randn(c).to(DEVICE, dtype)


@pytest.mark.parametrize("dtype, atol, rtol", DTYPES)
@pytest.mark.parametrize(
    "shape, groups, split",
    [
        pytest.param((2, 24, 5, 7), 4, None, id="B2-C24-G4-5x7"),  # 6 channels a group
        pytest.param((1, 48, 9, 11), 8, 4, id="B1-C48-G8-9x11-split4"),  # partials merged
        pytest.param((3, 16, 1, 1), 16, None, id="B3-one-pixel-one-channel-groups"),
        pytest.param((1, 16, 3, 3), 4, 16, id="split-beyond-the-pixels"),  # empty partials
    ],
)
# Lanes past the tensor's edge compute garbage that is never stored; numpy warns when it casts them.
@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
def test_matches_group_norm_then_silu(dtype, atol, rtol, shape, groups, split):
    torch.manual_seed(0)
    # SD VAE activations sit far from zero: a naive E[x^2] - E[x]^2 would lose the variance.
    x = activation(shape, dtype, scale=3.0, shift=40.0)
    weight, bias = _params(shape[1], dtype)
    got = group_norm_silu(x, weight, bias, groups, 1e-6, split=split)
    expected = group_norm_silu_reference(x.double(), weight.double(), bias.double(), groups, 1e-6)
    assert got.dtype == dtype and got.is_contiguous(memory_format=torch.channels_last)
    assert_close(got, expected, atol, rtol)


@pytest.mark.parametrize("dtype, atol, rtol", DTYPES)
@pytest.mark.parametrize(
    "step, mask_batch, kind",
    [
        pytest.param(1, 2, "random", id="step1"),
        pytest.param(2, 1, "random", id="step2-batch1-mask"),
        pytest.param(8, 2, "random", id="step8"),
        pytest.param(1, 2, "zeros", id="step1-no-hole"),
        pytest.param(1, 2, "ones", id="step1-all-hole"),
    ],
)
def test_fused_blend(dtype, atol, rtol, step, mask_batch, kind):
    torch.manual_seed(1)
    shape = (2, 24, 5, 6)
    h = activation(shape, dtype, scale=2.0, shift=5.0)
    f = activation(shape, dtype)
    mask = hole_mask(kind, mask_batch, step * 5, step * 6)
    weight, bias = _params(24, dtype)
    y, blended = group_norm_silu(h, weight, bias, 8, 1e-6, blend_with=f, blend_mask=mask, return_blend=True, split=2)
    ref_y, ref_blended = group_norm_silu_reference(
        h.double(), weight.double(), bias.double(), 8, 1e-6, blend_with=f.double(), blend_mask=mask, return_blend=True
    )
    torch.testing.assert_close(blended.double(), ref_blended, atol=0, rtol=0)  # a 0/1 blend picks values
    assert_close(y, ref_y, atol, rtol)
    only_y = group_norm_silu(h, weight, bias, 8, 1e-6, blend_with=f, blend_mask=mask, split=2)
    torch.testing.assert_close(only_y, y, atol=0, rtol=0)


def test_argument_errors_name_the_argument():
    x = activation((1, 8, 4, 4), torch.float32)
    weight, bias = _params(8, torch.float32)
    mask = torch.zeros(1, 1, 4, 4, device=DEVICE)
    cases = [
        ({"x": x.contiguous()}, "x: expected channels-last"),
        ({"num_groups": 3}, "num_groups: expected a positive divisor of C=8"),
        ({"weight": weight[:4]}, r"weight: expected shape \(8,\)"),
        ({"bias": None}, r"bias: expected shape \(8,\)"),
        ({"blend_with": x}, "blend_with/blend_mask: give both"),
        ({"return_blend": True}, "return_blend: needs blend_with"),
        ({"blend_with": x.half(), "blend_mask": mask}, "blend_with: expected dtype torch.float32"),
        ({"blend_with": x, "blend_mask": mask[..., :3]}, "blend_mask: expected a"),
        ({"split": 3}, "split: expected a power of two"),
    ]
    for override, message in cases:
        args = {"x": x, "weight": weight, "bias": bias, "num_groups": 4, **override}
        with pytest.raises(ValueError, match=message):
            group_norm_silu(**args)
