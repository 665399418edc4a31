"""blend against the decoder's reference formula: the mask sampled at every blend point's
step, batch-1 masks, strided mask views, and no leak from the side the mask does not pick."""
import pytest
import torch
from kernel_cases import DEVICE, DTYPES, activation, hole_mask

from asymvq.kernels import blend, blend_reference


@pytest.mark.parametrize("dtype, atol, rtol", DTYPES)
@pytest.mark.parametrize("step", [1, 2, 4, 8])
@pytest.mark.parametrize("kind", ["zeros", "ones", "random"])
def test_matches_reference_exactly(dtype, atol, rtol, step, kind):
    del atol, rtol  # a 0/1 blend picks values: it must be exact in every dtype
    torch.manual_seed(step)
    h, f = activation((2, 20, 3, 5), dtype), activation((2, 20, 3, 5), dtype)
    mask = hole_mask(kind, 1 if step == 2 else 2, 3 * step, 5 * step)
    got = blend(h, f, mask)
    assert got.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(got, blend_reference(h, f, mask), atol=0, rtol=0)
    # the decoder hands the op an already-sampled strided view: same result
    torch.testing.assert_close(blend(h, f, mask[:, :, ::step, ::step]), got, atol=0, rtol=0)


def test_soft_mask_uses_the_reference_arithmetic():
    torch.manual_seed(0)
    h, f = activation((1, 16, 4, 4), torch.float32), activation((1, 16, 4, 4), torch.float32)
    mask = torch.rand(1, 1, 4, 4, device=DEVICE)
    torch.testing.assert_close(blend(h, f, mask), blend_reference(h, f, mask))


def test_unselected_side_is_not_read():
    h = torch.full((1, 16, 2, 2), float("nan"), device=DEVICE).contiguous(memory_format=torch.channels_last)
    f = torch.ones_like(h)
    out = blend(h, f, torch.zeros(1, 1, 2, 2, device=DEVICE))  # no hole: all f
    assert torch.equal(out, f)


def test_argument_errors_name_the_argument():
    h = activation((2, 8, 3, 3), torch.float32)
    mask = torch.zeros(2, 1, 6, 6, device=DEVICE)
    with pytest.raises(ValueError, match="f: expected shape"):
        blend(h, h[:1], mask)
    with pytest.raises(ValueError, match="f: expected channels-last"):
        blend(h, h.contiguous(), mask)
    with pytest.raises(ValueError, match=r"mask: expected a \(1 or 2, 1, s\*3, s\*3\) mask"):
        blend(h, h, mask[..., :5])
    with pytest.raises(ValueError, match="mask: expected shape"):
        blend(h, h, torch.zeros(3, 1, 6, 6, device=DEVICE))
    with pytest.raises(ValueError, match="mask: expected a float"):
        blend(h, h, torch.zeros(2, 1, 6, 6, dtype=torch.bool, device=DEVICE))


def test_exported_names_are_the_functions_whatever_was_imported_first():
    """A submodule named like an export would shadow it once imported (models/triton_ops.py hit this)."""
    import importlib

    import asymvq.kernels as kernels

    for module in ("_common", "conv", "group_norm", "mask_blend", "partial_ratio"):
        importlib.import_module(f"asymvq.kernels.{module}")
    for name in kernels.__all__:
        assert not isinstance(getattr(kernels, name), type(kernels)), name
    assert callable(kernels.blend) and kernels.blend.__module__ == "asymvq.kernels.mask_blend"
    from asymvq.models.triton_ops import TritonOps

    assert TritonOps()._blend is kernels.blend  # 'module' object is not callable, before
