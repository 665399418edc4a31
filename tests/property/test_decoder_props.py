"""Property: ``AsymmetricDecoder.forward`` either decodes (finite, (B, 3, 8h, 8w), equal to the
fp32 reference call on the canonical inputs) or raises ValueError naming the argument; a tiled decode
equals the full one for any size, tile and overlap."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from props_settings import examples

from asymvq import AsymmetricDecoder

FLOATS = [torch.float16, torch.bfloat16, torch.float32, torch.float64]


@pytest.fixture(scope="module")
def decoder():
    torch.manual_seed(0)
    return AsymmetricDecoder("tiny").eval()


def _case(data, B, h, w):
    g = torch.Generator().manual_seed(data.draw(st.integers(0, 2**16), label="seed"))
    z = torch.randn(B, 4, h, w, generator=g)
    image = torch.rand(data.draw(st.sampled_from([1, B]), label="image batch"), 3, 8 * h, 8 * w, generator=g) * 2 - 1
    mask = (torch.rand(data.draw(st.sampled_from([1, B]), label="mask batch"), 1, 8 * h, 8 * w, generator=g) < 0.5).float()
    return z, image, mask


# every accepted mask form -> the 0/1 float mask it stands for
MASK_FORMS = {
    "float01": lambda m: m, "bool": lambda m: m.bool(), "uint8-01": lambda m: m.to(torch.uint8),
    "uint8-0255": lambda m: (m * 255).to(torch.uint8), "float-0255": lambda m: m * 255, "int64": lambda m: m.long(),
    "float16": lambda m: m.half(), "float64": lambda m: m.double(), "3-channel": lambda m: m.expand(-1, 3, -1, -1),
    "2d": lambda m: m[0, 0], "non-contiguous": lambda m: m.transpose(-1, -2).contiguous().transpose(-1, -2),
}


@examples(40)
@given(data=st.data(), B=st.integers(1, 2), h=st.integers(1, 3), w=st.integers(1, 3),
       zdtype=st.sampled_from(FLOATS), idtype=st.sampled_from(FLOATS), cond=st.booleans(),
       form=st.sampled_from(sorted(MASK_FORMS)))
def test_valid_inputs_decode_like_the_fp32_reference(decoder, data, B, h, w, zdtype, idtype, cond, form):
    z, image, mask = _case(data, B, h, w)
    z = z.to(zdtype)
    if form == "2d":
        mask = mask[:1]
    with torch.no_grad():
        if cond:
            img = image.to(idtype).clamp(-1, 1)
            out = decoder(z, img, MASK_FORMS[form](mask))
            ref = decoder(z.float(), img.float(), mask)
        else:
            out, ref = decoder(z), decoder(z.float())
    assert out.shape == (B, 3, 8 * h, 8 * w) and out.dtype == torch.float32
    assert bool(torch.isfinite(out).all())
    # Bitwise, on every CPU: check_condition gives every mask form the same values in a standard
    # layout (models/inputs.standard_layout), so both decodes run the same kernels on the same layout.
    assert torch.equal(out, ref)


def _meta(t):
    return torch.empty_like(t, device="meta")


# kind -> (arg named in the error, corruption of (z, image, mask))
BAD = {
    "latents-int": ("latents", lambda z, i, m: (z.long(), None, None)),
    "latents-bool": ("latents", lambda z, i, m: (z > 0, None, None)),
    "latents-uint8-with-condition": ("latents", lambda z, i, m: (z.to(torch.uint8), i, m)),
    "latents-zero-batch": ("latents", lambda z, i, m: (z[:0], None, None)),
    "latents-zero-height": ("latents", lambda z, i, m: (z[:, :, :0], None, None)),
    "latents-zero-width": ("latents", lambda z, i, m: (z[..., :0], i[..., :0], m[..., :0])),
    "latents-3-channels": ("latents", lambda z, i, m: (z[:, :3], i, m)),
    "latents-3d": ("latents", lambda z, i, m: (z[0], None, None)),
    "latents-5d": ("latents", lambda z, i, m: (z[None], None, None)),
    "latents-nan": ("latents", lambda z, i, m: (z.index_fill(0, torch.tensor([0]), float("nan")), i, m)),
    "latents-inf": ("latents", lambda z, i, m: (z.index_fill(0, torch.tensor([0]), float("inf")), None, None)),
    "latents-fp64-overflows-fp32": ("latents", lambda z, i, m: (z.double() * 1e300, None, None)),
    "latents-numpy": ("latents", lambda z, i, m: (z.numpy(), None, None)),
    "latents-list": ("latents", lambda z, i, m: (z.tolist(), None, None)),
    "latents-meta-device": ("latents", lambda z, i, m: (_meta(z), None, None)),
    "image-int": ("image", lambda z, i, m: (z, (i * 127.5 + 127.5).to(torch.uint8), m)),
    "image-bool": ("image", lambda z, i, m: (z, i > 0, m)),
    "image-0-255": ("image", lambda z, i, m: (z, i * 127.5 + 127.5, m)),
    "image-nan": ("image", lambda z, i, m: (z, i.index_fill(0, torch.tensor([0]), float("nan")), m)),
    "image-wrong-size": ("image", lambda z, i, m: (z, i[..., :-8], m[..., :-8])),
    "image-1-channel": ("image", lambda z, i, m: (z, i[:, :1], m)),
    "image-batch-3": ("image", lambda z, i, m: (z, torch.cat([i[:1]] * 3), m)),
    "image-numpy": ("image", lambda z, i, m: (z, i.numpy(), m)),
    "image-meta-device": ("image", lambda z, i, m: (z, _meta(i), m)),
    "image-missing": ("image", lambda z, i, m: (z, None, m)),
    "mask-missing": ("mask", lambda z, i, m: (z, i, None)),
    "mask-soft": ("mask", lambda z, i, m: (z, i, m * 0.5)),
    "mask-values-0-3": ("mask", lambda z, i, m: (z, i, m * 3)),
    "mask-nan": ("mask", lambda z, i, m: (z, i, m.index_fill(0, torch.tensor([0]), float("nan")))),
    "mask-negative": ("mask", lambda z, i, m: (z, i, -m - 1)),
    "mask-wrong-size": ("mask", lambda z, i, m: (z, i, m[:, :, :-8])),
    "mask-4-channels": ("mask", lambda z, i, m: (z, i, m.expand(-1, 4, -1, -1))),
    "mask-3-channels-differ": ("mask", lambda z, i, m: (z, i, torch.cat([m, 1 - m, m], 1))),
    "mask-batch-3": ("mask", lambda z, i, m: (z, i, torch.cat([m[:1]] * 3))),
    "mask-3d": ("mask", lambda z, i, m: (z, i, m[:, 0])),
    "mask-numpy": ("mask", lambda z, i, m: (z, i, m.numpy())),
    "mask-meta-device": ("mask", lambda z, i, m: (z, i, _meta(m))),
}


@pytest.mark.parametrize("kind", sorted(BAD))
@examples(4)
@given(data=st.data(), B=st.integers(1, 2), h=st.integers(1, 2), w=st.integers(1, 2), zdtype=st.sampled_from(FLOATS))
def test_bad_inputs_raise_valueerror_naming_the_argument(decoder, data, B, h, w, kind, zdtype):
    z, image, mask = _case(data, B, h, w)
    arg, corrupt = BAD[kind]
    z, image, mask = corrupt(z.to(zdtype) if kind.startswith("image") or kind.startswith("mask") else z, image, mask)
    if kind in ("image-batch-3", "mask-batch-3") and B == 3 or kind == "image-wrong-size" and w == 1:
        return
    with pytest.raises(ValueError, match=rf"^{arg}: expected "), torch.no_grad():
        decoder(z, image, mask)


def test_decode_scaled_refuses_integer_latents_before_dividing(decoder):
    with pytest.raises(ValueError, match="^latents: expected a floating-point tensor"):
        decoder.decode_scaled(torch.ones(1, 4, 1, 1, dtype=torch.int64))


def test_float64_numpy_latents_decode_like_fp32(decoder):
    z = torch.from_numpy(np.random.RandomState(0).randn(1, 4, 2, 2))  # float64, what numpy users have
    with torch.no_grad():
        assert torch.equal(decoder(z), decoder(z.float()))


BAD_KINDS = sorted(BAD)  # counted in README's Reliability figures


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_devices_are_named_and_dtypes_cast_on_cuda(decoder):
    z, image, mask = (t.cuda() for t in _fixed_case())
    dec = AsymmetricDecoder("tiny").eval()
    dec.load_state_dict(decoder.state_dict())
    dec = dec.cuda().half()
    with torch.no_grad():
        assert torch.equal(dec(z.float(), image.double(), mask), dec(z.half(), image.half(), mask))  # cast, same result
        with pytest.raises(ValueError, match="^latents: expected a tensor on the decoder's device"):
            dec(z.cpu())
        with pytest.raises(ValueError, match="^image: expected a tensor on the latents' device"):
            dec(z, image.cpu(), mask)
        dec(z, image, mask.cpu())  # a CPU mask is moved


def _fixed_case():
    g = torch.Generator().manual_seed(0)
    return (torch.randn(1, 4, 2, 2, generator=g), torch.rand(1, 3, 16, 16, generator=g) * 2 - 1,
            (torch.rand(1, 1, 16, 16, generator=g) > 0.5).float())


@pytest.fixture(scope="module")
def micro64():
    """The tiny topology (halo 9: tiles >= 19) at 4 channels, in float64: tiled vs full is float rounding only."""
    from asymvq.models.config import DecoderConfig

    torch.manual_seed(3)
    return AsymmetricDecoder(DecoderConfig((4, 8, 16, 16), 1, norm_num_groups=2)).eval().double()


@examples(10)
@given(data=st.data(), h=st.integers(20, 48), w=st.integers(1, 48), cond=st.booleans())
def test_tiled_decode_is_the_full_decode(micro64, data, h, w, cond):
    """Any size, tile and overlap the API accepts: the tiled decode equals the full one (float64, 1e-9)."""
    tile = data.draw(st.integers(19, h - 1), label="tile")  # 2 or more tiles down, any number across
    overlap = data.draw(st.one_of(st.none(), st.integers(0, tile - 1)), label="overlap")
    z, image, mask = _case(data, 1, h, w)
    args = (image.double(), mask) if cond else ()
    with torch.inference_mode():
        full = micro64(z.double(), *args)
        tiled = micro64(z.double(), *args, tile=tile, overlap=overlap)
    torch.testing.assert_close(tiled, full, rtol=1e-9, atol=1e-9 * float(full.abs().max()))
