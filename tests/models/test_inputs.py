"""Input forms the decoder accepts beyond the reference, and the errors for the rest."""
import pytest
import torch
from reference_models import random_inputs

from asymvq import AsymmetricDecoder, prepare_mask


@pytest.fixture(scope="module")
def decoder():
    torch.manual_seed(0)
    return AsymmetricDecoder("tiny").eval()


@pytest.fixture(scope="module")
def case(decoder):
    z, image, mask = random_inputs(batch=2, h=2, w=3)
    with torch.no_grad():
        expected = decoder(z, image, mask)
    return z, image, mask, expected


@pytest.mark.parametrize(
    "convert",
    [
        lambda m: m.bool(),
        lambda m: m.to(torch.uint8),
        lambda m: (m * 255).to(torch.uint8),
        lambda m: m * 255.0,
        lambda m: m.double(),
        lambda m: m.expand(-1, 3, -1, -1).contiguous(),
        lambda m: (m * 255).to(torch.uint8).expand(-1, 3, -1, -1),
    ],
    ids=["bool", "uint8-01", "uint8-0255", "float-0255", "float64", "3-channel", "3-channel-uint8"],
)
def test_mask_forms_decode_identically(decoder, case, convert):
    z, image, mask, expected = case
    with torch.no_grad():
        assert torch.equal(decoder(z, image, convert(mask)), expected)


def test_2d_mask_broadcasts(decoder, case):
    z, image, mask, _ = case
    with torch.no_grad():
        a = decoder(z, image, mask[0, 0])
        b = decoder(z, image, mask[:1].expand(2, -1, -1, -1))
    assert torch.equal(a, b)


def test_prepare_mask_thresholds_soft_masks():
    soft = torch.tensor([[0.0, 0.49, 0.51, 1.0]])
    assert prepare_mask(soft).tolist() == [[0.0, 0.0, 1.0, 1.0]]
    assert prepare_mask(torch.tensor([0, 100, 200], dtype=torch.uint8)).tolist() == [0.0, 0.0, 1.0]


@pytest.mark.parametrize(
    "make, arg, pattern",
    [
        (lambda z, i, m: (z[:, :3], i, m), "latents", r"shape \(B, 4, h, w\)"),
        (lambda z, i, m: (z.masked_fill(z > 1, float("nan")), i, m), "latents", "NaN or Inf"),
        (lambda z, i, m: (z.masked_fill(z > 1, float("inf")), None, None), "latents", "NaN or Inf"),
        (lambda z, i, m: (z.long(), None, None), "latents", "floating-point"),
        (lambda z, i, m: (z, i[..., :-8], m[..., :-8]), "image", "8x the latents"),
        (lambda z, i, m: (z, i[:, :1], m), "image", r"\(B, 3, H, W\)"),
        (lambda z, i, m: (z, torch.cat([i, i]), m), "image", "batch 1 or 2"),
        (lambda z, i, m: (z, i * 127.5 + 127.5, m), "image", r"values in \[-1, 1\]"),
        (lambda z, i, m: (z, (i * 127.5 + 127.5).to(torch.uint8), m), "image", "float tensor"),
        (lambda z, i, m: (z, i, m * 0.5), "mask", "binary values"),
        (lambda z, i, m: (z, i, m * 3), "mask", "binary values"),
        (lambda z, i, m: (z, i, m[:, :, :-8]), "mask", "spatial size"),
        (lambda z, i, m: (z, i, torch.cat([m, m, m, m], 1)), "mask", r"\(B, 1, H, W\)"),
        (lambda z, i, m: (z, i, torch.cat([m, 1 - m, m], 1)), "mask", "identical channels"),
        (lambda z, i, m: (z, i, torch.cat([m, m])), "mask", "batch 1 or 2"),
        (lambda z, i, m: (z, i, None), "mask", "whenever the other"),
        (lambda z, i, m: (z, None, m), "image", "whenever the other"),
    ],
)
def test_bad_inputs_name_the_argument(decoder, case, make, arg, pattern):
    z, image, mask, _ = case
    with pytest.raises(ValueError, match=rf"^{arg}: .*{pattern}"):
        decoder(*make(z, image, mask))


def test_vanilla_refuses_a_condition():
    dec = AsymmetricDecoder("vanilla")
    z, image, mask = random_inputs(batch=1, h=1, w=1)
    with pytest.raises(ValueError, match="no condition branch"):
        dec(z, image, mask)


@pytest.mark.parametrize("form", ["transposed", "expanded", "sliced", "channels-last"])
def test_inputs_come_out_in_a_standard_layout(form):
    """Another layout would let the CPU's conv kernels pick another algorithm (other bits on AVX2 CPUs)."""
    from asymvq.models.inputs import check_condition, check_latents

    z = torch.randn(2, 4, 2, 3)
    image, mask = torch.rand(2, 3, 16, 24) * 2 - 1, (torch.rand(2, 1, 16, 24) < 0.5).float()
    make = {"transposed": lambda t: t.transpose(-1, -2).contiguous().transpose(-1, -2),
            "expanded": lambda t: t[:1].expand(2, -1, -1, -1),
            "sliced": lambda t: torch.cat([t, t], 1)[:, :t.shape[1]],
            "channels-last": lambda t: t.contiguous(memory_format=torch.channels_last)}[form]
    z2 = check_latents(make(z), 4)
    img, m = check_condition(z2, make(image), make(mask))
    for t in (z2, img, m):
        assert t.is_contiguous() or t.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(img, make(image)) and torch.equal(m, make(mask))
