"""Property: ``prepare_image_and_mask`` (the pipeline's image and mask input) gives pixels in
[-1, 1] of shape (B, 3, H8, W8) and a 0/1 mask, equal to the RGB/L reference, for every PIL mode
PIL can convert, EXIF orientation applied, any size >= 8 (rounded down to a multiple of 8); or a
ValueError naming ``image``, ``mask_image``, ``height`` or ``width``."""
from __future__ import annotations

import io
import warnings

import numpy as np
import PIL.Image
import PIL.ImageOps
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from props_settings import examples

from asymvq.pipeline.images import pil_convert, prepare_image_and_mask

MODES = ["1", "L", "P", "RGB", "RGBA", "CMYK", "YCbCr", "HSV", "I", "I;16", "I;16B", "LA", "PA", "RGBX", "RGBa",
         "La", "LAB", "F"]
REFUSED = {"F"}  # no agreed range
REFUSED_MASK = {"F", "LAB"}  # PIL cannot convert LAB to L


def _pil(mode: str, w: int, h: int, seed: int) -> PIL.Image.Image:
    rng = np.random.RandomState(seed)
    if mode in ("I", "I;16", "I;16B"):
        im = PIL.Image.fromarray(rng.randint(0, 65536, (h, w)).astype(np.uint16))
        return im if mode == "I;16" else im.convert(mode) if mode == "I" else PIL.Image.frombytes(mode, (w, h), im.tobytes("raw", "I;16B"))
    if mode == "F":
        return PIL.Image.fromarray(rng.rand(h, w).astype(np.float32))
    rgb = PIL.Image.fromarray(rng.randint(0, 256, (h, w, 3)).astype(np.uint8))
    try:
        return rgb.convert(mode)
    except ValueError:  # modes PIL does not convert to: raw bytes of the right size
        raw = rng.randint(0, 256, w * h * len(mode.replace(";", ""))).astype(np.uint8).tobytes()
        return PIL.Image.frombytes(mode, (w, h), raw[: len(PIL.Image.new(mode, (w, h)).tobytes())])


def _ref_pixels(im: PIL.Image.Image, H: int, W: int) -> torch.Tensor:
    from diffusers.image_processor import VaeImageProcessor

    return VaeImageProcessor(vae_scale_factor=8).preprocess(im, height=H, width=W).float()


@examples(40)
@given(mode=st.sampled_from(MODES), as_mask=st.booleans(), w=st.integers(1, 40), h=st.integers(1, 40),
       seed=st.integers(0, 1000))
def test_every_pil_mode_and_size(mode, as_mask, w, h, seed):
    im = _pil(mode, w, h, seed)
    other = PIL.Image.new("L" if not as_mask else "RGB", (w, h), 0)
    image, mask = (other, im) if as_mask else (im, other)
    arg = "mask_image" if as_mask else "image"
    refused = mode in (REFUSED_MASK if as_mask else REFUSED)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if refused or w < 8 or h < 8:
            with pytest.raises(ValueError, match=rf"^({arg}|height|width): expected "):
                prepare_image_and_mask(image, mask, None, None)
            return
        pixels, m, H, W = prepare_image_and_mask(image, mask, None, None)
    assert (H, W) == (h - h % 8, w - w % 8)
    assert pixels.shape == (1, 3, H, W) and m.shape == (1, 1, H, W)
    assert bool(torch.isfinite(pixels).all()) and -1 <= float(pixels.min()) and float(pixels.max()) <= 1
    assert set(m.unique().tolist()) <= {0.0, 1.0}
    if not as_mask:
        ref = pil_convert(im, "RGB")
        if mode in ("I", "I;16", "I;16B"):  # 16 bits scaled to 8, not clipped at 255
            a = np.asarray(im).astype(np.int64)
            ref = PIL.Image.fromarray(((a * 255 + 32767) // 65535).astype(np.uint8), "L").convert("RGB")
        elif mode in ("1", "L", "P", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr"):
            ref = im.convert("RGB")
        assert torch.equal(pixels, _ref_pixels(ref, H, W))


def _with_orientation(im: PIL.Image.Image, orientation: int) -> PIL.Image.Image:
    exif = PIL.Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    im.save(buf, format="PNG", exif=exif)
    return PIL.Image.open(io.BytesIO(buf.getvalue()))


@examples(16)
@given(orientation=st.integers(1, 8), w=st.sampled_from([8, 16, 24]), h=st.sampled_from([8, 16, 32]),
       seed=st.integers(0, 1000))
def test_exif_orientation_is_applied_to_image_and_mask(orientation, w, h, seed):
    rng = np.random.RandomState(seed)
    raw = PIL.Image.fromarray(rng.randint(0, 256, (h, w, 3)).astype(np.uint8))
    hole = PIL.Image.fromarray((rng.rand(h, w) > 0.5).astype(np.uint8) * 255)
    image, mask = _with_orientation(raw, orientation), _with_orientation(hole, orientation)
    pixels, m, H, W = prepare_image_and_mask(image, mask, None, None)
    upright = PIL.ImageOps.exif_transpose(_with_orientation(raw, orientation))
    assert (W, H) == upright.size == ((h, w) if orientation >= 5 else (w, h))
    ref_pixels, ref_mask, _, _ = prepare_image_and_mask(upright.convert("RGB"),
                                                        PIL.ImageOps.exif_transpose(_with_orientation(hole, orientation)),
                                                        None, None)
    assert torch.equal(pixels, ref_pixels) and torch.equal(m, ref_mask)


ARRAY_BAD = {
    "numpy-int32": ("image", lambda a: a.astype(np.int32)),
    "numpy-float-0-255": ("image", lambda a: a.astype(np.float32)),
    "numpy-nan": ("image", lambda a: np.where(a > 128, np.nan, a / 255.0)),
    "numpy-4-channels": ("image", lambda a: np.concatenate([a, a[..., :1]], -1)),
    "numpy-5d": ("image", lambda a: a[None, None]),
    "torch-int64": ("image", lambda a: torch.from_numpy(a).permute(2, 0, 1).long()),
    "torch-channels-last": ("image", lambda a: torch.from_numpy(a).float() / 255),
    "torch-below-minus-1": ("image", lambda a: torch.from_numpy(a).permute(2, 0, 1).float() / -100),
    "list-of-arrays": ("image", lambda a: [a]),
    "string-path": ("image", lambda a: "image.png"),
    "none": ("image", lambda a: None),
    "empty-list": ("image", lambda a: []),
}


@pytest.mark.parametrize("kind", sorted(ARRAY_BAD))
@examples(3)
@given(w=st.sampled_from([8, 16]), h=st.sampled_from([8, 16]), seed=st.integers(0, 100), as_mask=st.booleans())
def test_bad_arrays_name_the_argument(kind, w, h, seed, as_mask):
    a = np.random.RandomState(seed).randint(0, 256, (h, w, 3)).astype(np.uint8)
    arg, make = ARRAY_BAD[kind]
    good_image, good_mask = a, a[..., 0] > 128
    image, mask = (good_image, make(a)) if as_mask else (make(a), good_mask)
    arg = "mask_image" if as_mask else "image"
    with pytest.raises(ValueError, match=rf"^{arg}: expected "):
        prepare_image_and_mask(image, mask, None, None)


@examples(20)
@given(h=st.one_of(st.integers(-16, 80), st.sampled_from([True, 64.0, "64", None])),
       w=st.one_of(st.integers(-16, 80), st.sampled_from([True, 64.0, "64", None])))
def test_height_width(h, w):
    image, mask = PIL.Image.new("RGB", (24, 16), 50), PIL.Image.new("L", (24, 16), 255)
    ok = lambda v: v is None or type(v) is int and v > 0 and v % 8 == 0  # noqa: E731
    if ok(h) and ok(w):
        pixels, m, H, W = prepare_image_and_mask(image, mask, h, w)
        assert (H, W) == (h or 16, w or 24) and pixels.shape == (1, 3, H, W) and m.shape == (1, 1, H, W)
    else:
        with pytest.raises(ValueError, match=r"^(height|width): expected a positive multiple of 8"):
            prepare_image_and_mask(image, mask, h, w)


BAD_KINDS = sorted(ARRAY_BAD) + ["pil-mode-F", "mask-pil-mode-LAB", "image-smaller-than-8",
                                 "height-not-multiple-of-8", "height-non-int"]
