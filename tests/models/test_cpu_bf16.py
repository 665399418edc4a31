"""bf16 decoding on the CPU (asymvq.models.cpu_bf16): random-weight decoders at 64x64 and above
against the same decoder in fp32, with a PSNR floor, no NaN/Inf, and the pipeline at --dtype bf16."""
import math

import pytest
import torch

from asymvq.models.cpu_bf16 import Fp32OutConv, to_cpu_bf16
from asymvq.models.sources import random_decoder

PSNR_FLOOR_DB = 40.0  # images in [-1, 1], peak-to-peak 2; measured 46-50 dB on tiny/base/x1.5


def psnr(a, b, peak_to_peak=2.0):
    mse = float(((a.float() - b.float()) ** 2).mean())
    return math.inf if mse == 0 else 10 * math.log10(peak_to_peak ** 2 / mse)


def _inputs(size, batch=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, 4, size // 8, size // 8, generator=g), torch.rand(batch, 3, size, size, generator=g) * 2 - 1,
            (torch.rand(batch, 1, size, size, generator=g) > 0.5).float())


@pytest.mark.parametrize("preset,size", [("tiny", 64), ("tiny", 96), ("base", 64)])
def test_bf16_decoder_keeps_the_psnr_floor(preset, size):
    ref_decoder = random_decoder(preset)
    bf16 = random_decoder(preset, dtype="bf16")  # prepared by random_decoder: channels-last, fp32 conv_out
    assert type(bf16.conv_out) is Fp32OutConv and bf16.conv_out.weight.dtype == torch.float32
    assert bf16.conv_in.weight.dtype == torch.bfloat16
    assert bf16.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    latent, image, mask = _inputs(size, batch=2)
    with torch.inference_mode():
        ref = ref_decoder(latent, image, mask)
        got = bf16(latent.bfloat16(), image, mask)
        plain = bf16(latent.bfloat16())
        plain_ref = ref_decoder(latent)
    assert got.dtype == torch.float32 and got.shape == ref.shape
    assert torch.isfinite(got).all() and torch.isfinite(plain).all()
    assert psnr(got, ref) >= PSNR_FLOOR_DB
    assert psnr(plain, plain_ref) >= PSNR_FLOOR_DB


def test_to_cpu_bf16_is_idempotent_and_keeps_the_state_dict():
    d = random_decoder("tiny")
    keys = {k: v.shape for k, v in d.state_dict().items()}
    to_cpu_bf16(to_cpu_bf16(d))
    assert {k: v.shape for k, v in d.state_dict().items()} == keys


def test_pipeline_runs_in_bf16_on_the_cpu():
    from asymvq.pipeline import InpaintPipeline

    image = torch.rand(1, 3, 64, 64)
    mask = torch.zeros(1, 1, 64, 64)
    mask[..., 16:48, 16:48] = 1
    kwargs = dict(prompt="a red door", image=image, mask_image=mask, num_inference_steps=2, output_type="pt")
    bf16 = InpaintPipeline.from_preset("tiny", dtype="bf16")
    out = bf16(**kwargs, generator=torch.Generator().manual_seed(0)).images
    assert out.shape == (1, 3, 64, 64) and torch.isfinite(out).all()
    decoder = bf16.stages.decoders()["decoder"].module.decoder
    assert type(decoder.conv_out) is Fp32OutConv
