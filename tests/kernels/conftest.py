"""The kernel tests' references in true fp32 on a GPU.

torch runs cuDNN convolutions (and, by its setting, matmuls) in TF32 on Ampere and later: a
10-bit mantissa, against which the kernels' IEEE fp32 (``dot_precision``) would fail a 1e-4
tolerance. The kernels do not change; the reference is made exact.
"""
import pytest
import torch


@pytest.fixture(autouse=True)
def _no_tf32():
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved
