"""Shared cases and helpers for the kernel tests (imported after conftest set the mode)."""
import pytest
import torch

from asymvq.kernels import interpreting

DEVICE = "cpu" if interpreting() else "cuda"

# (dtype, atol, rtol) against a reference computed in fp32 from the same (rounded) inputs
# (with TF32 off: tests/kernels/conftest.py). Every dtype is in `pytest -m gpu`, so the GPU check
# runs them all on the device; bf16 runs on a GPU only: the interpreter's bf16 tl.dot is wrong.
DTYPES = [
    pytest.param(torch.float32, 1e-4, 1e-4, id="fp32", marks=pytest.mark.gpu),
    pytest.param(torch.float16, 1e-2, 1e-2, id="fp16", marks=pytest.mark.gpu),
    pytest.param(
        torch.bfloat16, 6e-2, 6e-2, id="bf16",
        marks=[pytest.mark.gpu, pytest.mark.skipif(interpreting(), reason="bf16 tl.dot is wrong in the interpreter")],
    ),
]


def activation(shape, dtype, scale=1.0, shift=0.0, device=DEVICE):
    """Random (B, C, H, W) activation in channels-last memory (the caller seeds)."""
    x = torch.randn(shape) * scale + shift
    return x.to(device=device, dtype=dtype).contiguous(memory_format=torch.channels_last)


def hole_mask(kind, batch, height, width, device=DEVICE):
    """(batch, 1, H, W) float 0/1 hole mask: "zeros", "ones" or "random" (about half holes)."""
    if kind == "zeros":
        m = torch.zeros(batch, 1, height, width)
    elif kind == "ones":
        m = torch.ones(batch, 1, height, width)
    else:
        m = (torch.rand(batch, 1, height, width) > 0.5).float()
    return m.to(device)


def assert_close(got, expected, atol, rtol):
    torch.testing.assert_close(got.float(), expected.float(), atol=atol, rtol=rtol)
