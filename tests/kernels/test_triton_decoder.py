"""The decoder with kernels="triton" against kernels="torch": tiny presets on the CPU
interpreter (or the GPU), the x1.5 preset at 512x512 fp16 on a GPU; the torch path unchanged;
the fallback where Triton cannot run."""
import os
import subprocess
import sys
import warnings

import pytest
import torch
from kernel_cases import DEVICE

from asymvq.models import AsymmetricDecoder, DecoderConfig
from asymvq.models.condition import LAYER_STRIDE
from asymvq.models.decoder import BLEND_POINTS
from asymvq.models.ops import TORCH_OPS
from asymvq.models.triton_ops import TritonOps

PARTIAL = DecoderConfig((16, 32, 64, 64), 1, norm_num_groups=8, condition="partial")


def _decoder(config, dtype, device=DEVICE, seed=0, std=0.2):
    """Seeded random weights, large enough that every blend and norm moves the output."""
    torch.manual_seed(seed)
    dec = AsymmetricDecoder(config).eval()
    if std:
        with torch.no_grad():
            for p in dec.parameters():
                p.normal_(0.0, std if p.ndim > 1 else std / 2)
    return dec.to(device=device, dtype=dtype).to(memory_format=torch.channels_last)


def _inputs(batch, h, w, dtype, image_batch=None, mask_batch=None, seed=1, device=DEVICE):
    g = torch.Generator().manual_seed(seed)
    latents = torch.randn(batch, 4, h, w, generator=g)
    image = torch.rand(image_batch or batch, 3, 8 * h, 8 * w, generator=g) * 2 - 1
    mask = (torch.rand(mask_batch or batch, 1, 8 * h, 8 * w, generator=g) > 0.5).float()
    return latents.to(device, dtype), image.to(device, dtype), mask.to(device)


def _both(dec, latents, image, mask):
    with torch.no_grad():
        expected = dec.set_kernels("torch")(latents, image, mask)
        with warnings.catch_warnings():
            # a fallback to the torch ops would pass trivially: make its warning an error
            warnings.filterwarnings("error", message="kernels='triton'")
            got = dec.set_kernels("triton")(latents, image, mask)
    assert dec.kernels == "triton"
    return got, expected


@pytest.mark.parametrize(
    "config, dtype, batch, image_batch, mask_batch, tol",
    [
        pytest.param("tiny", torch.float32, 2, 1, 1, 1e-4, id="tiny-fp32-batch2-broadcast-image-and-mask"),
        pytest.param("tiny", torch.float16, 1, 1, 1, 2e-2, id="tiny-fp16"),
        pytest.param(PARTIAL, torch.float32, 2, 2, 1, 1e-4, id="partial-fp32-batch2-broadcast-mask"),
        pytest.param(PARTIAL, torch.float16, 1, 1, 1, 2e-2, id="partial-fp16"),
    ],
)
def test_triton_decoder_matches_torch(config, dtype, batch, image_batch, mask_batch, tol):
    dec = _decoder(config, dtype)
    latents, image, mask = _inputs(batch, 2, 3, dtype, image_batch, mask_batch)  # 16x24 pixels
    got, expected = _both(dec, latents, image, mask)
    assert got.shape == expected.shape == (batch, 3, 16, 24) and got.dtype == dtype
    scale = expected.abs().max().item()
    assert scale > 0.05  # the weights move the output: a zero image would match anything
    assert (got.float() - expected.float()).abs().max().item() <= tol * max(1.0, scale)


def test_load_decoder_with_triton_kernels(tmp_path):
    from asymvq import load_decoder, save_decoder

    save_decoder(_decoder("tiny", torch.float32, device="cpu"), tmp_path / "tiny")
    fused = load_decoder(tmp_path / "tiny", device=DEVICE, kernels="triton")
    reference = load_decoder(tmp_path / "tiny", device=DEVICE, kernels="torch")
    assert (fused.kernels, reference.kernels) == ("triton", "torch")
    latents, image, mask = _inputs(1, 2, 3, torch.float32)
    with torch.no_grad():
        got, expected = fused(latents, image, mask), reference(latents, image, mask)
    assert (got - expected).abs().max().item() <= 1e-4 * max(1.0, expected.abs().max().item())


def test_torch_path_is_the_reference_sequence_bit_for_bit():
    """decode_core with TorchOps computes exactly the reference order of operations."""
    dec = _decoder("tiny", torch.float32, device="cpu").to(memory_format=torch.contiguous_format)
    latents, image, mask = _inputs(2, 2, 3, torch.float32, device="cpu")
    with torch.no_grad():
        got = dec.set_kernels("torch")(latents, image, mask)
        h = dec.mid_block(dec.conv_in(dec.post_quant_conv(latents)))
        valid = 1 - mask
        feats = dec.condition_encoder.reference_forward(valid * image, valid)
        for (stride, layer), up in zip(BLEND_POINTS[:4], dec.up_blocks):
            m = mask[:, :, ::stride, ::stride]
            h = up(h * m + feats[layer] * (1 - m))
        h = h * mask + feats[0] * (1 - mask)
        expected = dec.conv_out(torch.nn.functional.silu(dec.conv_norm_out(h)))
    assert LAYER_STRIDE[-1] == BLEND_POINTS[0][0]
    assert torch.equal(got, expected)


@pytest.mark.parametrize("partial", [False, True], ids=["conv", "partial"])
def test_condition_features_match_the_reference_encoder(partial):
    """The op's own contract (already-masked image + valid mask), L4 included."""
    dec = _decoder(PARTIAL if partial else "tiny", torch.float32)
    _, image, mask = _inputs(2, 2, 3, torch.float32)
    valid = 1 - mask
    with torch.no_grad():
        got = TritonOps().condition_features(dec.condition_encoder, valid * image, valid)
        expected = TORCH_OPS.condition_features(dec.condition_encoder, valid * image, valid)
    assert len(got) == len(expected) == 5
    for g, e in zip(got, expected):
        # partial conv multiplies by up to 16 per layer: relative to each feature's scale
        torch.testing.assert_close(g, e, atol=1e-4 * max(1.0, e.abs().max().item()), rtol=1e-4)


def test_ops_fall_back_with_a_warning_for_tensors_the_kernels_cannot_take():
    ops = TritonOps()
    h = torch.zeros(1, 8, 2, 2, device="meta")
    with pytest.warns(RuntimeWarning, match="using the torch reference ops"):
        out = ops.blend(h, h, torch.zeros(1, 1, 2, 2, device="meta"))
    assert out.device.type == "meta" and out.shape == h.shape


def test_select_triton_without_gpu_or_interpreter_falls_back_to_torch():
    code = (
        "import warnings, torch\n"
        "from asymvq.models.op_select import select_ops\nfrom asymvq.models.ops import TORCH_OPS\n"
        "with warnings.catch_warnings(record=True) as w:\n"
        "    warnings.simplefilter('always')\n"
        "    ops = select_ops('triton')\n"
        "assert ops is TORCH_OPS, ops\n"
        "msgs = [str(x.message) for x in w]\n"
        "assert any('no CUDA device and TRITON_INTERPRET is not set' in m for m in msgs), msgs\n"
        "import os\n"
        "os.environ['TRITON_INTERPRET'] = '1'  # too late: the kernels are already defined\n"
        "with warnings.catch_warnings(record=True) as w:\n"
        "    warnings.simplefilter('always')\n"
        "    assert select_ops('triton') is TORCH_OPS\n"
        "assert any('set after asymvq.kernels was imported' in str(x.message) for x in w)\n"
        "print('fallback-ok')\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["CUDA_VISIBLE_DEVICES"] = ""
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and "fallback-ok" in run.stdout, run.stderr[-2000:]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_x15_decoder_at_512_fp16_on_gpu():
    """Both fp16 paths against the fp32 reference: the fused one may not drift further."""
    dec = _decoder("x1.5", torch.float32, device="cuda", std=0)  # default init keeps x1.5 finite
    latents, image, mask = _inputs(1, 64, 64, torch.float32, device="cuda")
    with torch.no_grad():
        exact = dec.set_kernels("torch")(latents, image, mask)
    dec = dec.half()
    got, torch16 = _both(dec, latents.half(), image.half(), mask)
    assert torch.isfinite(got).all()
    err_triton = (got.float() - exact).abs().max().item()
    err_torch = (torch16.float() - exact).abs().max().item()
    assert err_triton <= 2 * err_torch + 1e-2 * max(1.0, exact.abs().max().item())
