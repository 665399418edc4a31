"""FLUX.1 Fill in the runtime against diffusers' own ``FluxFillPipeline`` on tiny seeded components: the same
seed and embeddings give the same image (fp32, within 1e-3), batch 1 and 2, square and not; ASUKA's
conditional decoder on the same loop; one-line errors for FLUX's sizes and guidance."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parents[1] / "models"))
from tiny_pipelines import FLUX_TEXT_DIM, flux_fill_pipeline, image_and_mask, prompt_embeddings

from asymvq import AsymmetricDecoder
from asymvq.pipeline.flux_fill import FluxFillInpaintPipeline
from asymvq.profiling.timing import StageTimer

TOL = dict(atol=1e-3, rtol=0)


@pytest.fixture(scope="module")
def pipe():
    return flux_fill_pipeline()


def _run_both(pipe, ours, *, size, batch, strength=1.0, steps=2, guidance=30.0, **extra):
    pil_image, pil_mask, _, _ = image_and_mask(size)
    emb = prompt_embeddings(FLUX_TEXT_DIM, batch=batch)
    hh, ww = (size, size) if isinstance(size, int) else size
    args = dict(image=pil_image, mask_image=pil_mask, height=hh, width=ww, num_inference_steps=steps,
                strength=strength, guidance_scale=guidance, output_type="pt", **emb, **extra)
    gens = lambda: [torch.Generator().manual_seed(7 + i) for i in range(batch)] if batch > 1 \
        else torch.Generator().manual_seed(7)  # noqa: E731
    with torch.no_grad():
        expected = pipe(**args, generator=gens()).images
    got = ours(**args, generator=gens()).images
    return expected, got


@pytest.mark.parametrize("size,batch,strength", [(64, 1, 1.0), ((48, 80), 2, 1.0), ((64, 32), 1, 0.6)])
def test_flux_fill_matches_diffusers(pipe, size, batch, strength):
    ours = FluxFillInpaintPipeline.from_diffusers(pipe)
    expected, got = _run_both(pipe, ours, size=size, batch=batch, strength=strength)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, **TOL)


def test_flux_fill_images_per_prompt_and_one_generator(pipe):
    ours = FluxFillInpaintPipeline.from_diffusers(pipe)
    # diffusers repeats only embeddings it computed; given ones of batch 2 stand for 1 prompt x 2 images
    pil_image, pil_mask, _, _ = image_and_mask(32)
    emb1 = prompt_embeddings(FLUX_TEXT_DIM, batch=1)
    emb2 = {k: v.repeat(2, *[1] * (v.ndim - 1)) for k, v in emb1.items()}
    args = dict(image=pil_image, mask_image=pil_mask, num_inference_steps=2, output_type="pt")
    with torch.no_grad():  # diffusers' FLUX sizes default to 1024 (resizing the image); ours, the image's
        expected = pipe(**args, height=32, width=32, **emb2, generator=torch.Generator().manual_seed(3)).images
    got = ours(**args, **emb1, num_images_per_prompt=2, generator=torch.Generator().manual_seed(3)).images
    torch.testing.assert_close(got, expected, **TOL)
    assert not torch.allclose(got[0], got[1])  # two noises, two images


def test_flux_fill_with_asuka_decoder_times_every_stage(pipe):
    torch.manual_seed(0)
    asuka = AsymmetricDecoder("tiny-asuka").eval()
    ours = FluxFillInpaintPipeline.from_diffusers(pipe, decoder=asuka)
    plain = FluxFillInpaintPipeline.from_diffusers(pipe)
    pil_image, pil_mask, image, mask = image_and_mask(32)
    emb = prompt_embeddings(FLUX_TEXT_DIM)
    timer = StageTimer("cpu")
    run = lambda p, **kw: p(**emb, image=pil_image, mask_image=pil_mask, num_inference_steps=2, output_type="pt",  # noqa: E731
                            generator=torch.Generator().manual_seed(1), **kw)
    out = run(ours, timer=timer)
    ref = run(plain)
    torch.testing.assert_close(out.latents, ref.latents, atol=0, rtol=0)  # same loop, another decoder
    with torch.no_grad():
        expected = asuka.decode_scaled(ref.latents, image, mask)
    torch.testing.assert_close(out.images, (expected / 2 + 0.5).clamp(0, 1), atol=1e-5, rtol=0)
    spans = {name for name, _ in timer.collect()}
    assert {"vae_encode", "unet_step", "scheduler_step", "decode"} <= spans


@pytest.mark.parametrize("kwargs,match", [
    (dict(height=40, width=64), r"height: expected a positive multiple of 16 for FLUX"),
    (dict(height=64, width=72), r"width: expected a positive multiple of 16 for FLUX"),
    (dict(guidance_scale=-1.0), r"guidance_scale: expected a number in \[0, 100\]"),
    (dict(guidance_scale=float("nan")), r"guidance_scale: expected a number in \[0, 100\]"),
    (dict(strength=0.0), r"strength: expected a value in \(0, 1\]"),
    (dict(mask_image=None), r"mask_image: required"),
    (dict(pooled_prompt_embeds=None), r"pooled_prompt_embeds: required with prompt_embeds"),
    (dict(prompt_embeds=torch.zeros(1, 8, 5)), r"prompt_embeds: expected a float tensor \(B, tokens, dim\) with dim 32"),
])
def test_flux_fill_bad_input_is_one_line(pipe, kwargs, match):
    ours = FluxFillInpaintPipeline.from_diffusers(pipe)
    pil_image, pil_mask, _, _ = image_and_mask(64)
    args = dict(image=pil_image, mask_image=pil_mask, num_inference_steps=1, **prompt_embeddings(FLUX_TEXT_DIM))
    args.update(kwargs)
    with pytest.raises(ValueError, match=match) as err:
        ours(**args)
    assert "\n" not in str(err.value)


def test_flux_fill_image_not_multiple_of_16_is_refused(pipe):
    ours = FluxFillInpaintPipeline.from_diffusers(pipe)
    pil_image, pil_mask, _, _ = image_and_mask((40, 64))
    with pytest.raises(ValueError, match="height: expected a positive multiple of 16"):
        ours(image=pil_image, mask_image=pil_mask, num_inference_steps=1, **prompt_embeddings(FLUX_TEXT_DIM))


def test_flux_fill_prompts_through_clip_and_t5_match_diffusers():
    pipe = flux_fill_pipeline(text_encoders=True)
    ours = FluxFillInpaintPipeline.from_diffusers(pipe)
    pil_image, pil_mask, _, _ = image_and_mask((32, 48))
    args = dict(prompt=["a red cat", "a dog"], prompt_2=["sofa", "grass field"], image=pil_image,
                mask_image=pil_mask, height=32, width=48, num_inference_steps=2, output_type="pt",
                max_sequence_length=16)
    gens = lambda: [torch.Generator().manual_seed(i) for i in range(2)]  # noqa: E731
    with torch.no_grad():
        expected = pipe(**args, generator=gens()).images
    timer = StageTimer("cpu")
    got = ours(**args, generator=gens(), timer=timer).images
    torch.testing.assert_close(got, expected, **TOL)
    assert sum(name == "text_encode" for name, _ in timer.collect()) == 2  # CLIP, T5
    with pytest.raises(ValueError, match="prompt_2: a prompt is .* tokens long, past the text encoder's limit of 16"):
        ours(**{**args, "prompt_2": ["a much longer prompt than eight", "b"]})
