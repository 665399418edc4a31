"""Image and mask inputs: every accepted form gives the same tensors; every bad one a ValueError naming it."""
from __future__ import annotations

import numpy as np
import PIL.Image
import pytest
import torch

from asymvq.pipeline.images import load_image, postprocess, prepare_image_and_mask


@pytest.fixture(scope="module")
def uint8_pair():
    rs = np.random.RandomState(0)
    image = rs.randint(0, 256, (32, 48, 3), dtype=np.uint8)
    mask = np.zeros((32, 48), np.uint8)
    mask[8:24, 16:40] = 255
    return image, mask


def test_pil_numpy_and_torch_inputs_agree(uint8_pair):
    image, mask = uint8_pair
    forms = [
        (PIL.Image.fromarray(image), PIL.Image.fromarray(mask)),
        (image, mask),
        (image.astype(np.float32) / 255, mask.astype(np.float32) / 255),
        (torch.from_numpy(image).permute(2, 0, 1), torch.from_numpy(mask)),
        (torch.from_numpy(image).permute(2, 0, 1).float() / 255, torch.from_numpy(mask)[None].bool()),
    ]
    ref_img, ref_mask, h, w = prepare_image_and_mask(*forms[0], None, None)
    assert (h, w) == (32, 48) and ref_img.shape == (1, 3, 32, 48) and ref_mask.shape == (1, 1, 32, 48)
    assert -1.0 <= float(ref_img.min()) and float(ref_img.max()) <= 1.0
    assert set(ref_mask.unique().tolist()) == {0.0, 1.0} and float(ref_mask.mean()) == pytest.approx(16 * 24 / (32 * 48))
    for img, msk in forms[1:]:
        got_img, got_mask, _, _ = prepare_image_and_mask(img, msk, None, None)
        torch.testing.assert_close(got_img, ref_img, atol=1e-6, rtol=0)
        torch.testing.assert_close(got_mask, ref_mask, atol=0, rtol=0)


def test_soft_masks_are_binarised_at_one_half():
    image = np.zeros((16, 16, 3), np.float32)
    mask = np.linspace(0, 1, 16 * 16, dtype=np.float32).reshape(16, 16)
    _, m, _, _ = prepare_image_and_mask(image, mask, None, None)
    np.testing.assert_array_equal(m[0, 0].numpy(), (mask >= 0.5).astype(np.float32))


def test_explicit_size_resizes_and_default_rounds_down_to_eight(uint8_pair):
    image, mask = uint8_pair
    img, m, h, w = prepare_image_and_mask(PIL.Image.fromarray(image), PIL.Image.fromarray(mask), 64, 96)
    assert img.shape == (1, 3, 64, 96) and m.shape == (1, 1, 64, 96)
    _, _, h, w = prepare_image_and_mask(image[:30, :45], mask[:30, :45], None, None)
    assert (h, w) == (24, 40)


@pytest.mark.parametrize(
    "image, mask, arg",
    [
        (np.zeros((16, 16, 3), np.float32), np.zeros((16, 24), np.float32), "mask_image"),  # sizes differ
        (np.zeros((16, 16, 4), np.float32), np.zeros((16, 16), np.float32), "image"),  # RGBA array
        (np.full((16, 16, 3), 2.0, np.float32), np.zeros((16, 16), np.float32), "image"),  # out of [0, 1]
        (np.zeros((16, 16, 3), np.float32), np.full((16, 16), np.nan, np.float32), "mask_image"),
        (torch.zeros(3, 16, 16), torch.zeros(3, 16, 16), "mask_image"),  # 3-channel torch mask
        ("image.png", np.zeros((16, 16), np.float32), "image"),
        (np.zeros((16, 16, 3), np.int32), np.zeros((16, 16), np.float32), "image"),
        (np.zeros((16, 16, 3), np.float32), None, "mask_image"),
        (np.zeros((2, 16, 16, 3), np.float32), np.zeros((3, 16, 16), np.float32), "mask_image"),  # batch 3 vs 2
    ],
)
def test_bad_inputs_name_the_argument(image, mask, arg):
    with pytest.raises(ValueError, match=rf"^{arg}: expected"):
        prepare_image_and_mask(image, mask, None, None)


@pytest.mark.parametrize("height, width, arg", [(20, 16, "height"), (16, 0, "width")])
def test_sizes_must_be_multiples_of_eight(height, width, arg):
    with pytest.raises(ValueError, match=rf"^{arg}: expected a positive multiple of 8"):
        prepare_image_and_mask(np.zeros((16, 16, 3), np.float32), np.zeros((16, 16), np.float32), height, width)


def test_postprocess_forms_and_range():
    sample = torch.linspace(-1.5, 1.5, 2 * 3 * 8 * 8).reshape(2, 3, 8, 8)
    pil = postprocess(sample, "pil")
    arr = postprocess(sample, "np")
    pt = postprocess(sample, "pt")
    assert len(pil) == 2 and pil[0].size == (8, 8)
    assert arr.shape == (2, 8, 8, 3) and arr.min() == 0.0 and arr.max() == 1.0
    torch.testing.assert_close(pt, ((sample + 1) / 2).clamp(0, 1))
    with pytest.raises(ValueError, match="^output_type: expected"):
        postprocess(sample, "jpeg")


def test_load_image_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="image file not found"):
        load_image(tmp_path / "missing.png")
    (tmp_path / "notes.png").write_text("not an image")
    with pytest.raises(ValueError, match="not an image file"):
        load_image(tmp_path / "notes.png")
