"""Decoding what diffusers' FLUX.1 Fill and SDXL inpainting pipelines make (``output_type="latent"``):
asymvq's plain decoder of the pipeline's own VAE equals ``vae.decode`` within fp32 rounding, and a
conditional decoder (ASUKA's for FLUX) runs on the same latents. The recipe of docs/decoder.md."""
from __future__ import annotations

import pytest
import torch
from tiny_pipelines import (
    FLUX_TEXT_DIM,
    SDXL_TEXT_DIM,
    flux_fill_pipeline,
    image_and_mask,
    prompt_embeddings,
    sdxl_inpaint_pipeline,
)

from asymvq import AsymmetricDecoder, unpack_flux_latents
from asymvq.models.checkpoints import decoder_from_vae
from asymvq.models.flux_packing import pack_flux_latents

TOL = dict(atol=1e-5, rtol=1e-5)


def test_flux_fill_latents_decode_as_the_pipeline_decodes():
    pipe = flux_fill_pipeline()
    pil_image, pil_mask, image, mask = image_and_mask()
    packed = pipe(**prompt_embeddings(FLUX_TEXT_DIM), image=pil_image, mask_image=pil_mask, height=64, width=64,
                  num_inference_steps=2, output_type="latent", generator=torch.Generator().manual_seed(1)).images
    assert packed.shape == (1, 16, 64)  # (8/2)*(8/2) tokens of 4*16 values
    z = unpack_flux_latents(packed, 64, 64)
    torch.testing.assert_close(z, pipe._unpack_latents(packed, 64, 64, pipe.vae_scale_factor), atol=0, rtol=0)
    assert torch.equal(pack_flux_latents(z), packed)
    with torch.no_grad():
        expected = pipe.vae.decode(z / pipe.vae.config.scaling_factor + pipe.vae.config.shift_factor).sample
        ours = decoder_from_vae(pipe.vae)
        torch.testing.assert_close(ours.decode_scaled(z), expected, **TOL)
        # ASUKA's decoder (tiny, seeded) on the same latents, with the source image and the mask
        torch.manual_seed(0)
        asuka = AsymmetricDecoder("tiny-asuka").eval()
        out = asuka.decode_scaled(z, image, mask)
    assert out.shape == (1, 3, 64, 64) and bool(torch.isfinite(out).all())


def test_sdxl_inpaint_latents_decode_as_the_pipeline_decodes():
    pipe = sdxl_inpaint_pipeline()
    pil_image, pil_mask, _, _ = image_and_mask()
    emb = prompt_embeddings(SDXL_TEXT_DIM)
    z = pipe(**emb, negative_prompt_embeds=torch.zeros_like(emb["prompt_embeds"]),
             negative_pooled_prompt_embeds=torch.zeros_like(emb["pooled_prompt_embeds"]), image=pil_image,
             mask_image=pil_mask, height=64, width=64, strength=1.0, num_inference_steps=2, output_type="latent",
             generator=torch.Generator().manual_seed(1)).images
    assert z.shape == (1, 4, 8, 8)
    with torch.no_grad():
        expected = pipe.vae.decode(z / pipe.vae.config.scaling_factor).sample
        ours = decoder_from_vae(pipe.vae)
        assert ours.config.scaling_factor == 0.13025
        torch.testing.assert_close(ours.decode_scaled(z), expected, **TOL)


@pytest.mark.parametrize("args,match", [
    ((torch.zeros(1, 15, 64), 64, 64), "15 tokens do not make a 64x64 image"),
    ((torch.zeros(1, 16, 63), 64, 64), r"packed FLUX latents \(B, tokens, 4\*C\)"),
    ((torch.zeros(1, 16, 64), 64, 8), "width: expected the image width in pixels"),
    ((torch.zeros(16, 64), 64, 64), "latents: expected packed FLUX latents"),
])
def test_unpack_names_what_is_wrong(args, match):
    with pytest.raises(ValueError, match=match):
        unpack_flux_latents(*args)
