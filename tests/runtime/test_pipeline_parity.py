"""InpaintPipeline against diffusers' StableDiffusionInpaintPipeline / StableDiffusionPipeline (fp32, CPU).

Same tiny random networks, same seed: the images must agree within 1e-4 for every scheduler,
partial strength, batches and text-to-image. The decoder is ours (converted from the
diffusers AsymmetricAutoencoderKL); the UNet, CLIP and VAE encoder are diffusers' own modules.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from runtime_helpers import diffusers_pipeline, image_and_mask

from asymvq.pipeline import SCHEDULERS, InpaintPipeline, make_scheduler

ATOL = 1e-4


def _both(ref, ours, scheduler: str, **kwargs):
    ours.set_scheduler(scheduler)
    ref.scheduler = make_scheduler(scheduler, ours.scheduler.config)
    a = ref(**kwargs, generator=torch.Generator().manual_seed(7), output_type="np").images
    b = ours(**kwargs, generator=torch.Generator().manual_seed(7), output_type="np").images
    return a, b


@pytest.fixture(scope="module")
def ours(ref_inpaint):
    return InpaintPipeline.from_diffusers(ref_inpaint)


@pytest.mark.parametrize("scheduler", SCHEDULERS)
def test_inpaint_matches_diffusers_for_every_scheduler(ref_inpaint, ours, scheduler):
    image, mask = image_and_mask()
    a, b = _both(ref_inpaint, ours, scheduler, prompt="a red cat", image=image, mask_image=mask,
                 num_inference_steps=3, height=64, width=64)
    assert a.shape == b.shape == (1, 64, 64, 3)
    np.testing.assert_allclose(b, a, atol=ATOL, rtol=0)


def test_partial_strength_and_eta_match_diffusers(ref_inpaint, ours):
    """strength < 1 starts from the encoded source; eta = 1 draws scheduler noise: both use the generator."""
    image, mask = image_and_mask(seed=1)
    a, b = _both(ref_inpaint, ours, "ddim", prompt="a dog", negative_prompt="blurry", image=image, mask_image=mask,
                 num_inference_steps=4, strength=0.6, eta=1.0, guidance_scale=5.0)
    np.testing.assert_allclose(b, a, atol=ATOL, rtol=0)


def test_batched_prompts_and_images_match_diffusers(ref_inpaint, ours):
    image, mask = image_and_mask(seed=2, batch=4)
    a, b = _both(ref_inpaint, ours, "ddim", prompt=["a red cat", "a dog"], negative_prompt=["blurry", "dark"],
                 image=image, mask_image=mask, num_inference_steps=2, num_images_per_prompt=2)
    assert b.shape == (4, 64, 64, 3)
    np.testing.assert_allclose(b, a, atol=ATOL, rtol=0)


def test_the_decoder_condition_matters(ref_inpaint, ours):
    """Guard against a parity that holds for the wrong reason: the plain decode must differ."""
    image, mask = image_and_mask(seed=3)
    kw = dict(prompt="a red cat", image=image, mask_image=mask, num_inference_steps=2,
              generator=torch.Generator().manual_seed(7), output_type="np")
    conditioned = ours(**kw).images
    kw["generator"] = torch.Generator().manual_seed(7)
    plain = ours(**kw, decoder={"decoder-plain": ours.stages.engines["decoder-plain"]}).images
    assert np.abs(conditioned - plain).max() > 10 * ATOL


def test_prompt_embeds_equal_prompts(ours):
    image, mask = image_and_mask(seed=4)
    ids = ours.tokenizer(["a red cat", ""], padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        emb = ours.stages.text_encode(ids)
    kw = dict(image=image, mask_image=mask, num_inference_steps=2, output_type="pt")
    a = ours("a red cat", **kw, generator=torch.Generator().manual_seed(0)).images
    b = ours(prompt_embeds=emb[:1], negative_prompt_embeds=emb[1:], **kw, generator=torch.Generator().manual_seed(0)).images
    torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_text_to_image_matches_diffusers():
    ref = diffusers_pipeline("text2img")
    ours = InpaintPipeline.from_diffusers(ref)
    kw = dict(prompt="a red cat", num_inference_steps=3, height=64, width=64, output_type="np")
    a = ref(**kw, generator=torch.Generator().manual_seed(5)).images
    b = ours(**kw, generator=torch.Generator().manual_seed(5)).images
    np.testing.assert_allclose(b, a, atol=ATOL, rtol=0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_fp32_matches_cpu(monkeypatch):
    # true fp32 on the GPU (no TF32), so only summation order differs from the CPU
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    image, mask = image_and_mask(seed=6)
    kw = dict(prompt="a red cat", image=image, mask_image=mask, num_inference_steps=3, output_type="np")
    cpu = InpaintPipeline.from_diffusers(diffusers_pipeline("inpaint"))
    gpu = InpaintPipeline.from_diffusers(diffusers_pipeline("inpaint").to("cuda"))
    a = cpu(**kw, generator=torch.Generator().manual_seed(1)).images
    b = gpu(**kw, generator=torch.Generator().manual_seed(1)).images
    np.testing.assert_allclose(b, a, atol=1e-3, rtol=0)
