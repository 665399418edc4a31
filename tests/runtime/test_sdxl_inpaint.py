"""SDXL inpainting in the runtime against diffusers' own ``StableDiffusionXLInpaintPipeline`` on tiny seeded
components: the same seed and embeddings give the same image (fp32, within 1e-3), two schedulers, batch 1
and 2, non-square sizes, the 9-channel inpainting UNet and the 4-channel base with latent blending,
strength < 1, guidance off and rescaled; one-line errors."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parents[1] / "models"))
from tiny_pipelines import SDXL_TEXT_DIM, image_and_mask, prompt_embeddings, sdxl_inpaint_pipeline

from asymvq.pipeline.schedulers import switch_scheduler
from asymvq.pipeline.sdxl_inpaint import SDXLInpaintPipeline

TOL = dict(atol=1e-3, rtol=0)


@pytest.fixture(scope="module")
def pipes():
    return {9: sdxl_inpaint_pipeline(), 4: sdxl_inpaint_pipeline(in_channels=4)}


def _compare(pipe, *, size=64, batch=1, scheduler="euler", **kwargs):
    pipe.scheduler = switch_scheduler(scheduler, pipe.scheduler)
    ours = SDXLInpaintPipeline.from_diffusers(pipe)
    pil_image, pil_mask, _, _ = image_and_mask(size)
    hh, ww = (size, size) if isinstance(size, int) else size
    args = dict(image=pil_image, mask_image=pil_mask, height=hh, width=ww, num_inference_steps=3, output_type="pt",
                **prompt_embeddings(SDXL_TEXT_DIM, batch=batch), **kwargs)
    gens = lambda: [torch.Generator().manual_seed(5 + i) for i in range(batch)] if batch > 1 \
        else torch.Generator().manual_seed(5)  # noqa: E731
    with torch.no_grad():
        expected = pipe(**args, generator=gens()).images
    got = ours(**args, generator=gens()).images
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, **TOL)
    return got


@pytest.mark.parametrize("channels", [9, 4])
@pytest.mark.parametrize("scheduler", ["euler", "ddim", "dpm++"])
def test_sdxl_matches_diffusers(pipes, channels, scheduler):
    _compare(pipes[channels], scheduler=scheduler)  # diffusers' default strength 0.9999: the source is encoded


@pytest.mark.parametrize("kwargs", [
    dict(size=(48, 80), batch=2, strength=1.0),
    dict(size=(64, 32), strength=0.6, guidance_scale=1.0),
    dict(guidance_rescale=0.7, negative_prompt_embeds=torch.ones(1, 8, SDXL_TEXT_DIM) * 0.1,
         negative_pooled_prompt_embeds=torch.ones(1, 32) * 0.2, original_size=(128, 96), target_size=(64, 64),
         crops_coords_top_left=(4, 8)),
    dict(num_images_per_prompt=2, strength=1.0),
    dict(scheduler="ddim", eta=0.5, batch=2),  # DDIM draws from the generators after every draw before the loop
])
@pytest.mark.parametrize("channels", [9, 4])
def test_sdxl_matches_diffusers_variants(pipes, channels, kwargs):
    _compare(pipes[channels], **kwargs)


def test_sdxl_aesthetic_score_variant():
    """The refiner-style config: 5 time ids with the aesthetic score instead of the target size."""
    pipe = sdxl_inpaint_pipeline()
    pipe.unet.add_embedding.linear_1 = torch.nn.Linear(5 * 8 + 32, pipe.unet.add_embedding.linear_1.out_features)
    pipe.register_to_config(requires_aesthetics_score=True)
    _compare(pipe, aesthetic_score=7.0, negative_aesthetic_score=2.0)


@pytest.mark.parametrize("kwargs,match", [
    (dict(height=60, width=64), r"height: expected a positive multiple of 8"),
    (dict(guidance_scale=-2.0), r"guidance_scale: expected a finite number >= 0"),
    (dict(guidance_scale=[7.0, 7.0]), r"guidance_scale: expected one number for SDXL"),
    (dict(guidance_rescale=2.0), r"guidance_rescale: expected a value in \[0, 1\]"),
    (dict(strength=1.5), r"strength: expected a value in \(0, 1\]"),
    (dict(pooled_prompt_embeds=None), r"pooled_prompt_embeds: required with prompt_embeds"),
    (dict(original_size=(64,)), r"original_size: expected a pair of numbers"),
    (dict(prompt="a cat"), r"prompt / prompt_embeds: pass exactly one"),
])
def test_sdxl_bad_input_is_one_line(pipes, kwargs, match):
    ours = SDXLInpaintPipeline.from_diffusers(pipes[9])
    pil_image, pil_mask, _, _ = image_and_mask(64)
    args = dict(image=pil_image, mask_image=pil_mask, num_inference_steps=1, **prompt_embeddings(SDXL_TEXT_DIM))
    args.update(kwargs)
    with pytest.raises(ValueError, match=match) as err:
        ours(**args)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("negative", [None, ["blurry", "dark"]])
def test_sdxl_prompts_through_both_clip_encoders_match_diffusers(negative):
    pipe = sdxl_inpaint_pipeline(text_encoders=True)
    ours = SDXLInpaintPipeline.from_diffusers(pipe)
    pil_image, pil_mask, _, _ = image_and_mask((48, 32))
    args = dict(prompt=["a red cat", "a dog"], negative_prompt=negative, image=pil_image, mask_image=pil_mask,
                height=48, width=32, num_inference_steps=2, output_type="pt")
    gens = lambda: [torch.Generator().manual_seed(i) for i in range(2)]  # noqa: E731
    with torch.no_grad():
        expected = pipe(**args, generator=gens()).images
    torch.testing.assert_close(ours(**args, generator=gens()).images, expected, **TOL)
    with pytest.raises(ValueError, match="prompt: a prompt is .* tokens long, past the text encoder's limit of 77"):
        ours(**{**args, "prompt": ["word " * 80, "b"]})


def test_sdxl_fp16_decodes_in_fp32_as_diffusers_upcasts():
    """SDXL's VAE overflows in fp16 (``force_upcast``): the diffusion half runs in fp16, the decoder in fp32."""
    pipe = sdxl_inpaint_pipeline().to(torch.float16)
    assert pipe.vae.config.force_upcast
    ours = SDXLInpaintPipeline.from_diffusers(pipe)
    assert ours.dtype == torch.float16 and ours.decode_dtype == torch.float32
    assert {e.dtype for e in ours.stages.decoders().values()} == {torch.float32}
    pil_image, pil_mask, _, _ = image_and_mask(32)
    emb = {k: v.half() for k, v in prompt_embeddings(SDXL_TEXT_DIM).items()}
    out = ours(image=pil_image, mask_image=pil_mask, num_inference_steps=2, output_type="pt", **emb,
               generator=torch.Generator().manual_seed(0))
    assert out.latents.dtype == torch.float16 and bool(torch.isfinite(out.images).all())
