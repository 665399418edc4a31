"""One entry point for every family: ``InpaintPipeline.from_diffusers`` / ``from_pretrained`` / ``from_preset``
recognise SD 1.x, SDXL and FLUX.1 Fill by their components and give that family's pipeline, whose seeded
images are diffusers'; what is none of them is refused by name."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parents[1] / "models"))
from tiny_pipelines import (
    FLUX_TEXT_DIM,
    SDXL_TEXT_DIM,
    flux_fill_pipeline,
    image_and_mask,
    prompt_embeddings,
    sdxl_inpaint_pipeline,
)

from asymvq import InpaintPipeline
from asymvq.pipeline import FluxFillInpaintPipeline, SDXLInpaintPipeline
from asymvq.pipeline.families import FLUX_FILL, SD, SDXL, diffusers_family, folder_family

TOL = dict(atol=1e-3, rtol=0)


def _same_images(pipe, ours, text_dim, **extra):
    pil_image, pil_mask, _, _ = image_and_mask((32, 48))
    args = dict(image=pil_image, mask_image=pil_mask, height=32, width=48, num_inference_steps=2, output_type="pt",
                **prompt_embeddings(text_dim), **extra)
    with torch.no_grad():
        expected = pipe(**args, generator=torch.Generator().manual_seed(4)).images
    torch.testing.assert_close(ours(**args, generator=torch.Generator().manual_seed(4)).images, expected, **TOL)


def test_from_diffusers_recognises_sdxl_and_flux_fill():
    sdxl, flux = sdxl_inpaint_pipeline(), flux_fill_pipeline()
    assert (diffusers_family(sdxl), diffusers_family(flux)) == (SDXL, FLUX_FILL)
    ours = InpaintPipeline.from_diffusers(sdxl)
    assert isinstance(ours, SDXLInpaintPipeline)  # no longer taken for SD 1.5
    _same_images(sdxl, ours, SDXL_TEXT_DIM)
    ours = InpaintPipeline.from_diffusers(flux)
    assert isinstance(ours, FluxFillInpaintPipeline)
    _same_images(flux, ours, FLUX_TEXT_DIM)


def test_from_diffusers_sd_is_still_the_sd_pipeline():
    from diffusers import StableDiffusionInpaintPipeline

    from asymvq.models import sd_networks as sd

    pipe = StableDiffusionInpaintPipeline(
        vae=sd.build_vae("tiny"), text_encoder=sd.build_text_encoder("tiny"), tokenizer=sd.build_tokenizer("tiny"),
        unet=sd.build_unet("tiny"), scheduler=__import__("diffusers").DDIMScheduler(**sd.SCHEDULER_CONFIG),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    assert diffusers_family(pipe) == SD
    assert type(InpaintPipeline.from_diffusers(pipe)) is InpaintPipeline


def test_the_other_transformers_and_subsets_are_refused():
    flux = flux_fill_pipeline()
    flux.transformer.register_to_config(in_channels=64)  # what FLUX.1 [dev] text-to-image takes
    with pytest.raises(ValueError, match="FluxTransformer2DModel with 64 input channels is not FLUX.1 Fill"):
        InpaintPipeline.from_diffusers(flux)
    with pytest.raises(ValueError, match="components: pipelines of a subset are SD 1.x's"):
        InpaintPipeline.from_diffusers(sdxl_inpaint_pipeline(), components=("unet",))
    with pytest.raises(ValueError, match="scheduler: FLUX.1 Fill runs its flow-matching scheduler only"):
        InpaintPipeline.from_diffusers(flux_fill_pipeline(), scheduler="ddim")


@pytest.mark.parametrize("build,cls,text_dim", [
    (sdxl_inpaint_pipeline, SDXLInpaintPipeline, SDXL_TEXT_DIM),
    (flux_fill_pipeline, FluxFillInpaintPipeline, FLUX_TEXT_DIM),
])
def test_from_pretrained_reads_the_family_from_the_folder(tmp_path, build, cls, text_dim):
    pipe = build(text_encoders=True)
    pipe.save_pretrained(tmp_path)
    ours = InpaintPipeline.from_pretrained(tmp_path)
    assert isinstance(ours, cls) and folder_family(tmp_path) in (SDXL, FLUX_FILL)
    _same_images(pipe, ours, text_dim)


@pytest.mark.parametrize("preset,cls", [("tiny-sdxl", SDXLInpaintPipeline), ("tiny-flux-fill", FluxFillInpaintPipeline)])
def test_tiny_presets_run_from_prompts(preset, cls):
    ours = InpaintPipeline.from_preset(preset, decoder="tiny-asuka" if "flux" in preset else None)
    assert isinstance(ours, cls)
    pil_image, pil_mask, _, _ = image_and_mask(32)
    extra = dict(max_sequence_length=16) if "flux" in preset else {}
    out = ours("a cat on a sofa", image=pil_image, mask_image=pil_mask, num_inference_steps=2, output_type="np",
               generator=torch.Generator().manual_seed(0), **extra)
    assert out.images.shape == (1, 32, 32, 3)
