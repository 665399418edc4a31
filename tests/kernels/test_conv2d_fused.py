"""conv2d_fused against its plain-torch reference: every fusion flag, both geometries of the
condition branch, odd sizes, batch > 1, masks all zero / all one / random."""
import pytest
import torch
from kernel_cases import DEVICE, DTYPES, activation, assert_close, hole_mask

from asymvq.kernels import conv2d_fused, conv2d_fused_reference
from asymvq.models.condition import partial_conv2d

# (kernel, stride, padding): condition branch L0/L1, L2-L4
GEOMETRIES = [
    pytest.param(3, 1, 1, id="3x3s1"),
    pytest.param(4, 2, 1, id="4x4s2"),
]


# Every geometry with a random mask; the degenerate masks (no hole, all hole) on one of them.
MASKED_CASES = [
    pytest.param(*g.values, "random", id=f"{g.id}-random") for g in GEOMETRIES
] + [pytest.param(3, 1, 1, kind, id=f"3x3s1-{kind}") for kind in ("zeros", "ones")]


def _out_size(size, k, s, p):
    return (size + 2 * p - k) // s + 1


def _case(dtype, k, cin=5, cout=20, batch=2, h=9, w=13, seed=0):
    torch.manual_seed(seed)
    x = activation((batch, cin, h, w), dtype)
    weight = (torch.randn(cout, cin, k, k) / (cin * k * k) ** 0.5).to(DEVICE, dtype)
    bias = torch.randn(cout).to(DEVICE, dtype)
    return x, weight, bias


def _compare(x, weight, bias, atol, rtol, **kw):
    got = conv2d_fused(x, weight, bias, **kw)
    upcast = {k: (v.float() if isinstance(v, torch.Tensor) else v) for k, v in kw.items()}
    expected = conv2d_fused_reference(x.float(), weight.float(), None if bias is None else bias.float(), **upcast)
    for name, g, e in zip(got._fields, got, expected):
        assert (g is None) == (e is None), name
        if g is not None:
            assert g.shape == e.shape, name
            if name != "mask":
                assert g.dtype == x.dtype and g.is_contiguous(memory_format=torch.channels_last), name
            assert_close(g, e, atol, rtol)
    return got


@pytest.mark.parametrize("dtype, atol, rtol", DTYPES)
@pytest.mark.parametrize("k, s, p", GEOMETRIES)
def test_plain_conv_with_bias(dtype, atol, rtol, k, s, p):
    x, weight, bias = _case(dtype, k)
    _compare(x, weight, bias, atol, rtol, stride=s, padding=p)


@pytest.mark.parametrize("dtype, atol, rtol", DTYPES)
@pytest.mark.parametrize("k, s, p, kind", MASKED_CASES)
def test_mask_on_load_and_relu_output(dtype, atol, rtol, k, s, p, kind):
    x, weight, bias = _case(dtype, k, seed=1)
    hole = hole_mask(kind, 1, x.shape[2], x.shape[3])  # batch 1 broadcasts over the batch of 2
    got = _compare(x, weight, bias, atol, rtol, stride=s, padding=p,
                   in_mask=hole, in_mask_is_hole=True, relu_out=True)
    if kind == "ones":  # everything masked out: only the bias is left
        assert_close(got.out, bias.float().view(1, -1, 1, 1).expand_as(got.out), atol, rtol)


@pytest.mark.parametrize("dtype, atol, rtol", DTYPES)
@pytest.mark.parametrize("k, s, p, kind", MASKED_CASES)
def test_partial_conv(dtype, atol, rtol, k, s, p, kind):
    x, weight, bias = _case(dtype, k, seed=2)
    hole = hole_mask(kind, 2, x.shape[2], x.shape[3])
    got = _compare(x, weight, bias, atol, rtol, stride=s, padding=p,
                   in_mask=hole, in_mask_is_hole=True, partial=True, relu_out=True)
    assert torch.isfinite(got.out.float()).all()  # the fp32 ratio: no inf * 0 in fp16
    assert set(got.mask.unique().tolist()) <= {0.0, 1.0}


@pytest.mark.parametrize("dtype, atol, rtol", DTYPES)
def test_partial_conv_matches_the_models_partial_conv2d(dtype, atol, rtol):
    """The kernel's semantics are the decoder's (NVIDIA PartialConv2d), layer after layer."""
    torch.manual_seed(3)
    layers = [torch.nn.Conv2d(3, 16, 3, 1, 1), torch.nn.Conv2d(16, 24, 4, 2, 1)]
    x = activation((2, 3, 12, 10), dtype)
    valid = 1 - hole_mask("random", 2, 12, 10)
    ref_x, ref_valid, our_x, our_valid = x.float(), valid, x, valid
    for layer in layers:
        ref_x, ref_valid = partial_conv2d(layer.to(DEVICE), ref_x, ref_valid)
        w, b = layer.weight.detach().to(dtype), layer.bias.detach().to(dtype)
        r = conv2d_fused(our_x, w, b, stride=layer.stride[0], padding=layer.padding[0],
                         in_mask=our_valid, partial=True, relu_out=True)
        assert_close(r.out, ref_x, atol, rtol)
        torch.testing.assert_close(r.mask, ref_valid)
        ref_x, our_x, our_valid = torch.relu(ref_x), r.relu, r.mask


@pytest.mark.parametrize("dtype, atol, rtol", DTYPES)
@pytest.mark.parametrize("k, s, p, kind", MASKED_CASES)
def test_blend_epilogue(dtype, atol, rtol, k, s, p, kind):
    x, weight, bias = _case(dtype, k, seed=4)
    ho, wo = (_out_size(n, k, s, p) for n in x.shape[2:])
    torch.manual_seed(5)
    other = activation((x.shape[0], weight.shape[0], ho, wo), dtype)
    full_res = hole_mask(kind, 2, 4 * ho, 4 * wo)  # sampled every 4th pixel, as at H/4
    _compare(x, weight, bias, atol, rtol, stride=s, padding=p, blend_with=other, blend_mask=full_res)


@pytest.mark.parametrize("dtype, atol, rtol", DTYPES)
def test_every_fusion_at_once_with_tiles_on_both_gemm_axes(dtype, atol, rtol):
    """Cout, B*Ho*Wo and Cin all exceed one tile (the interpreter's are 512 x 64 x 64), no bias."""
    x, weight, _ = _case(dtype, 3, cin=67, cout=72, batch=3, h=15, w=13, seed=6)
    torch.manual_seed(7)
    other = activation((3, 72, 15, 13), dtype)
    _compare(x, weight, None, atol, rtol, stride=1, padding=1,
             in_mask=hole_mask("random", 3, 15, 13), in_mask_is_hole=True, partial=True, relu_out=True,
             blend_with=other, blend_mask=hole_mask("random", 1, 15, 13))


def test_argument_errors_name_the_argument():
    x, weight, bias = _case(torch.float32, 3, cin=4, cout=16, batch=1, h=6, w=6)
    cases = [
        ({"x": x.contiguous()}, "x: expected channels-last"),
        ({"x": x[0]}, "x: expected a 4-D"),
        ({"x": x.to(torch.int32)}, "x: expected dtype"),
        ({"weight": weight.half()}, "weight: expected dtype"),
        ({"weight": weight[:, :3]}, r"weight: expected shape \(Cout, 4, K, K\)"),
        ({"bias": bias[:3]}, r"bias: expected shape \(16,\)"),
        ({"partial": True}, "in_mask: partial convolution needs"),
        ({"in_mask": torch.zeros(1, 1, 5, 6)}, r"in_mask: expected shape \(1 or 1, 1, 6, 6\)"),
        ({"blend_with": x}, "blend_with/blend_mask: give both"),
        ({"blend_with": activation((1, 16, 6, 6), torch.float32), "blend_mask": torch.zeros(1, 1, 9, 9)},
         r"blend_mask: expected a \(1 or 1, 1, s\*6, s\*6\) mask, integer s >= 1"),
        ({"blend_with": activation((1, 8, 6, 6), torch.float32), "blend_mask": torch.zeros(1, 1, 6, 6)},
         r"blend_with: expected shape \(1, 16, 6, 6\)"),
    ]
    for override, message in cases:
        args = {"x": x, "weight": weight, "bias": bias, "padding": 1, **override}
        if "blend_mask" in args:
            args["blend_mask"] = args["blend_mask"].to(DEVICE)
        with pytest.raises(ValueError, match=message):
            conv2d_fused(**args)
