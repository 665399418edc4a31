"""The conv kernel's addresses are int64: one image with (H-1)*W*C >= 2**31 elements.

One tile through the interpreter, on a real call of ``conv2d_fused``: a 4 GiB fp16 input that
is allocated but never touched except at the rows the kernel reads (the operating system maps
pages on first touch, so the process grows by kilobytes), and a stride so large that the few
output rows read input rows near the far end of the image. With int32 products those rows'
offsets wrap: the kernel reads the wrong memory (or faults) and the result differs.
"""
import resource

import pytest
import torch
from kernel_cases import DEVICE

from asymvq.kernels import conv2d_fused, interpreting

pytestmark = pytest.mark.skipif(not interpreting(), reason="the interpreter's CPU tensors are allocated lazily")

C, COUT = 64, 16
H = 2**31 // C + 3  # (H - 1) * W * C >= 2**31 with W = 1


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def test_conv_reads_rows_past_2_31_elements():
    assert (H - 1) * 1 * C >= 2**31
    stride = (H - 1) // 3  # output rows 0..3 read input rows up to 3 * stride + 1 = H - 2
    rss_before = _rss_mib()
    x = torch.empty((1, C, H, 1), dtype=torch.float16, device=DEVICE, memory_format=torch.channels_last)
    g = torch.Generator().manual_seed(0)
    ho = (H + 2 - 3) // stride + 1
    rows = sorted({o * stride - 1 + kh for o in range(ho) for kh in range(3)} - {-1, H})
    values = {r: torch.randn(C, generator=g).half() for r in rows}
    for r, v in values.items():
        x[0, :, r, 0] = v
    weight = (torch.randn(COUT, C, 3, 3, generator=g) / 24).half()
    bias = torch.randn(COUT, generator=g).half()

    got = conv2d_fused(x, weight, bias, stride=stride, padding=1, relu_out=True)

    assert got.out.shape == (1, COUT, ho, 1)
    expected = torch.empty(COUT, ho)
    for o in range(ho):
        acc = bias.float().clone()
        for kh in range(3):
            r = o * stride - 1 + kh
            if 0 <= r < H:  # the column: W = 1, padding 1, so only the middle tap is inside
                acc += weight[:, :, kh, 1].float() @ values[r].float()
        expected[:, o] = acc
    torch.testing.assert_close(got.out[0, :, :, 0].float(), expected, atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(got.relu[0, :, :, 0].float(), expected.clamp(min=0), atol=2e-2, rtol=2e-2)
    assert max(values) * C >= 2**31  # the last row read is past the int32 range
    assert _rss_mib() - rss_before < 512, "the 4 GiB input was touched: the test would need that much memory"
