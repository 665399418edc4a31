"""A pipeline of a subset of components (what each Ray Serve stage holds): the denoise half or the decode
half alone, with the same weights and the same numbers as the whole pipeline."""
import pytest
import torch
from runtime_helpers import image_and_mask

from asymvq.engines.contract import DECODER_COMPONENTS, TEXT_ENCODER, UNET
from asymvq.pipeline import InpaintPipeline, PipelineSource
from asymvq.pipeline.stages import DENOISE_COMPONENTS


def _denoise(pipe):
    image, mask = image_and_mask(seed=4)
    return pipe.denoise("a cat", image, mask, num_inference_steps=2, generator=torch.Generator().manual_seed(2))


def test_the_halves_alone_give_the_whole_pipelines_numbers(tiny_pipe):
    denoiser = InpaintPipeline.from_preset("tiny", components=DENOISE_COMPONENTS)
    decoder = PipelineSource(preset="tiny").build(components=DECODER_COMPONENTS)
    assert set(denoiser.stages.engines) == set(DENOISE_COMPONENTS) and not denoiser.stages.decoders()
    assert set(decoder.stages.engines) == set(tiny_pipe.stages.decoders())  # no UNet, no encoders built
    whole, half = _denoise(tiny_pipe), _denoise(denoiser)
    assert torch.equal(whole.latents, half.latents)
    want = tiny_pipe.decode(whole)
    assert torch.equal(want, PipelineSource(preset="tiny", dtype="fp32").build(components=DECODER_COMPONENTS).decode(half))
    # the source's default (auto: bf16 on a CPU with native bf16) decodes the fp32 denoiser's latents in its own dtype
    auto = decoder.decode(half)
    assert auto.shape == want.shape and float((auto.float() - want).abs().max()) < 0.1


def test_a_half_refuses_the_other_halfs_work():
    decoder = InpaintPipeline.from_preset("tiny", components=DECODER_COMPONENTS)
    with pytest.raises(ValueError, match=r"^denoise: this pipeline holds only \['decoder', 'decoder-plain'\]"):
        _denoise(decoder)
    denoiser = InpaintPipeline.from_preset("tiny", components=DENOISE_COMPONENTS)
    with pytest.raises(ValueError, match=r"^decoder: this pipeline holds only "):
        denoiser.decode(_denoise(denoiser))
    with pytest.raises(ValueError, match=r"^components: expected 'unet' \(to denoise\) and/or decoder"):
        InpaintPipeline.from_preset("tiny", components=(TEXT_ENCODER,))
    with pytest.raises(ValueError, match=r"^components: unknown \['vae'\]"):
        InpaintPipeline.from_preset("tiny", components=("vae", UNET))
