"""The partial-convolution condition branch against NVIDIA's PartialConv2d, written out plainly."""
import pytest
import torch
import torch.nn.functional as F
from reference_models import random_inputs

from asymvq import AsymmetricDecoder, DecoderConfig
from asymvq.models.condition import partial_conv2d


def nvidia_partial_conv(conv: torch.nn.Conv2d, x, mask_in):
    """NVIDIA/partialconv PartialConv2d.forward (multi_channel=False, return_mask=True), in float64."""
    x, mask_in = x.double(), mask_in.double()
    w, b = conv.weight.double(), conv.bias.double()
    k, s, p = conv.kernel_size[0], conv.stride[0], conv.padding[0]
    update_mask = F.conv2d(mask_in, torch.ones(1, 1, k, k, dtype=torch.float64), stride=s, padding=p)
    mask_ratio = (k * k) / (update_mask + 1e-8)
    update_mask = torch.clamp(update_mask, 0, 1)
    mask_ratio = mask_ratio * update_mask
    raw_out = F.conv2d(x * mask_in, w, b, stride=s, padding=p)
    bias_view = b.view(1, -1, 1, 1)
    output = ((raw_out - bias_view) * mask_ratio + bias_view) * update_mask
    return output, update_mask


@pytest.mark.parametrize("k, s, p", [(3, 1, 1), (4, 2, 1)])
@pytest.mark.parametrize("dtype, atol", [(torch.float32, 1e-5), (torch.float16, 2e-2)])
def test_partial_conv_matches_nvidia(k, s, p, dtype, atol):
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(5, 7, k, stride=s, padding=p)
    x = torch.randn(2, 5, 12, 10)
    valid = (torch.rand(2, 1, 12, 10) > 0.6).float()
    valid[0, :, 2:9, 1:8] = 0  # a hole wider than the kernel: windows with no valid pixel
    expected, expected_mask = nvidia_partial_conv(conv, x, valid)
    out, new_mask = partial_conv2d(conv.to(dtype), x.to(dtype), valid.to(dtype))
    assert out.dtype == dtype and torch.isfinite(out).all()  # fp16 ratio computed in fp32: no inf*0
    assert (out.double() - expected).abs().max().item() <= atol
    assert torch.equal(new_mask.double(), expected_mask)
    assert (expected_mask == 0).any() and (expected_mask == 1).any()  # both cases exercised


def test_all_valid_partial_conv_equals_plain_conv_inside():
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 4, 3, padding=1)
    x = torch.randn(1, 3, 9, 9)
    out, _ = partial_conv2d(conv, x, torch.ones(1, 1, 9, 9))
    plain = conv(x)
    assert torch.allclose(out[..., 1:-1, 1:-1], plain[..., 1:-1, 1:-1], atol=1e-6)
    # zero padding counts as invalid: border windows are rescaled, so they differ
    assert not torch.allclose(out[..., 0, :], plain[..., 0, :], atol=1e-3)


def test_partial_decoder_uses_the_partial_branch():
    cfg = DecoderConfig((16, 32, 64, 64), 1, norm_num_groups=8, condition="partial")
    torch.manual_seed(0)
    partial = AsymmetricDecoder(cfg).eval()
    plain = AsymmetricDecoder(DecoderConfig((16, 32, 64, 64), 1, norm_num_groups=8)).eval()
    plain.load_state_dict(partial.state_dict())  # same weights, only the conv semantics differ
    z, image, mask = random_inputs(batch=2, h=2, w=3)
    valid = 1 - mask
    with torch.no_grad():
        out = partial(z, image, mask)
        feats = partial.condition_encoder.reference_forward(valid * image, valid)
        # layer by layer against NVIDIA's formula, each layer fed the previous updated mask
        x, m = valid * image, valid
        for i, layer in enumerate(partial.condition_encoder.layers):
            x, m = nvidia_partial_conv(layer, torch.relu(x) if i else x, m)
            assert (feats[i].double() - x).abs().max().item() <= 1e-4
        assert torch.isfinite(out).all()
        assert (out - plain(z, image, mask)).abs().max().item() > 1e-4
