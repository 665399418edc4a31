"""Our decoder against diffusers' AsymmetricAutoencoderKL / AutoencoderKL, every preset, fp32."""
import pytest
import torch
from reference_models import diffusers_reference, random_inputs

from asymvq import AsymmetricDecoder
from asymvq.models.checkpoints import convert_diffusers_state_dict, load_state_dict_strict

TOL = 1e-5  # max abs, fp32, the bar


def _pair(preset):
    ref = diffusers_reference(preset)
    with torch.device("meta"):
        ours = AsymmetricDecoder(preset).eval()
    load_state_dict_strict(ours, convert_diffusers_state_dict(ref.state_dict()))
    return ref, ours


@pytest.mark.parametrize("preset", ["tiny", "base", "x1.5", "x2"])
def test_asymmetric_presets_match_diffusers(preset):
    ref, ours = _pair(preset)
    z, image, mask = random_inputs(batch=2, h=1, w=2)
    with torch.no_grad():
        with_mask = (ref.decode(z, image=image, mask=mask).sample, ours(z, image, mask))
        plain = (ref.decode(z).sample, ours(z))
    for expected, got in (with_mask, plain):
        assert got.shape == expected.shape == (2, 3, 8, 16)
        assert (got - expected).abs().max().item() <= TOL
    # the condition really changes the output (a blend that did nothing would pass the above)
    assert (with_mask[1] - plain[1]).abs().max().item() > 1e-3


def test_vanilla_matches_autoencoderkl():
    ref, ours = _pair("vanilla")
    z, _, _ = random_inputs(batch=2, h=3, w=5)
    with torch.no_grad():
        assert (ours(z) - ref.decode(z).sample).abs().max().item() <= TOL


def test_batch_one_image_and_mask_broadcast_to_latent_batch():
    # diffusers raises KeyError here (its features are keyed by full shape, batch included)
    ref, ours = _pair("tiny")
    z, image, mask = random_inputs(batch=3, h=3, w=4)
    with torch.no_grad():
        got = ours(z, image[:1], mask[:1])
        expected = ref.decode(z, image=image[:1].expand(3, -1, -1, -1), mask=mask[:1].expand(3, -1, -1, -1)).sample
    assert (got - expected).abs().max().item() <= TOL


def test_decode_scaled_divides_by_scaling_factor():
    ours = AsymmetricDecoder("tiny").eval()
    z, image, mask = random_inputs(batch=1)
    with torch.no_grad():
        a = ours.decode_scaled(z * ours.config.scaling_factor, image, mask)
        b = ours(z, image, mask)
    assert (a - b).abs().max().item() <= 1e-5  # only the rounding of z * s / s differs


def test_all_ones_mask_is_the_plain_decoder_and_all_zeros_keeps_condition():
    # mask = 1 everywhere: every blend keeps the decoder's own features
    torch.manual_seed(0)
    ours = AsymmetricDecoder("tiny").eval()
    z, image, _ = random_inputs(batch=1)
    ones = torch.ones(1, 1, *image.shape[-2:])
    with torch.no_grad():
        assert torch.equal(ours(z, image, ones), ours(z))
        zeros_out = ours(z, image, torch.zeros_like(ones))
    # mask = 0 everywhere: the output no longer depends on the latents at all
    with torch.no_grad():
        assert torch.allclose(ours(torch.randn_like(z), image, torch.zeros_like(ones)), zeros_out)


@pytest.mark.parametrize("dtype, atol", [(torch.float16, 2e-2), (torch.bfloat16, 1e-1)])
def test_half_precision_tracks_fp32(dtype, atol):
    # fp32 inputs are cast to the weights' dtype by forward; the output comes back in that dtype
    torch.manual_seed(0)
    ours = AsymmetricDecoder("tiny").eval()
    z, image, mask = random_inputs(batch=1)
    with torch.no_grad():
        expected = ours(z, image, mask)
        got = ours.to(dtype)(z.to(dtype), image, mask)
    assert got.dtype == dtype and torch.isfinite(got).all()
    assert (got.float() - expected).abs().max().item() <= atol
