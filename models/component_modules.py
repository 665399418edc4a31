"""Each pipeline component as an nn.Module with the fixed signature of the vocabulary (``components.py``).

These wrappers are what gets exported (ONNX, AOTInductor) and what the torch engine runs, so
every backend sees the same inputs and outputs: tensors in, one tensor out, no dicts, no
output dataclasses. Each one's ``forward`` takes its component's inputs, in order, and
``static_dims()`` gives the sizes its network fixes (latent channels, UNet input channels,
text width), which export binds into the vocabulary's dims.
"""
from __future__ import annotations

import torch
from torch import nn

from .components import (
    DECODER,
    DECODER_PLAIN,
    FLUX_TEXT_ENCODER,
    FLUX_TRANSFORMER,
    SDXL_TEXT_ENCODER,
    SDXL_TEXT_ENCODER_2,
    SDXL_UNET,
    T5_ENCODER,
    TEXT_ENCODER,
    UNET,
    VAE_ENCODER,
)
from .decoder import AsymmetricDecoder
from .flux_packing import PATCH, pack_flux_latents, pack_flux_mask


class DecoderComponent(nn.Module):
    """latent, image, mask -> sample. ``mask``: float 0/1, 1 channel, batch 1 or B."""

    def __init__(self, decoder: AsymmetricDecoder):
        super().__init__()
        self.decoder = decoder

    def forward(self, latent: torch.Tensor, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.decoder.decode_core(latent, image, mask)

    def static_dims(self) -> dict[str, int]:
        return {"latent_channels": self.decoder.config.latent_channels}


class PlainDecoderComponent(nn.Module):
    """latent -> sample, the decoder without its condition (text-to-image mode)."""

    def __init__(self, decoder: AsymmetricDecoder):
        super().__init__()
        self.decoder = decoder

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        return self.decoder.decode_core(latent, None, None)

    def static_dims(self) -> dict[str, int]:
        return {"latent_channels": self.decoder.config.latent_channels}


class UNetComponent(nn.Module):
    """sample, timestep, encoder_hidden_states -> noise_pred (diffusers UNet2DConditionModel)."""

    def __init__(self, unet: nn.Module):
        super().__init__()
        self.unet = unet

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor) -> torch.Tensor:
        return self.unet(sample, timestep, encoder_hidden_states, return_dict=False)[0]

    def static_dims(self) -> dict[str, int]:
        c = self.unet.config
        return {"unet_in_channels": c.in_channels, "latent_channels": c.out_channels, "text_dim": c.cross_attention_dim}


class VaeEncoderComponent(nn.Module):
    """image in [-1, 1] -> moments (mean and logvar stacked on channels), before sampling.

    Sampling stays in the pipeline so that its random draw uses the caller's generator,
    exactly as diffusers does.
    """

    def __init__(self, vae: nn.Module):
        super().__init__()
        self.encoder = vae.encoder
        self.quant_conv = getattr(vae, "quant_conv", None)
        self.latent_channels = vae.config.latent_channels

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        h = self.encoder(image)
        return self.quant_conv(h) if self.quant_conv is not None else h

    def static_dims(self) -> dict[str, int]:
        return {"latent_channels": self.latent_channels}


class TextEncoderComponent(nn.Module):
    """input_ids -> last_hidden_state (transformers CLIPTextModel)."""

    def __init__(self, text_encoder: nn.Module):
        super().__init__()
        self.text_encoder = text_encoder

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.text_encoder(input_ids, return_dict=False)[0]

    def static_dims(self) -> dict[str, int]:
        return {"text_dim": self.text_encoder.config.hidden_size}


def _text_len(text_len: int | None) -> dict[str, int]:
    """The text length an encoder is exported for, where its owner fixes one (T5 takes any length)."""
    return {} if text_len is None else {"text_len": text_len}


class SDXLTextEncoderComponent(nn.Module):
    """input_ids -> penultimate_hidden_state (SDXL's first encoder, a CLIPTextModel)."""

    def __init__(self, text_encoder: nn.Module):
        super().__init__()
        self.text_encoder = text_encoder

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.text_encoder(input_ids, output_hidden_states=True).hidden_states[-2]

    def static_dims(self) -> dict[str, int]:
        return {"text_dim": self.text_encoder.config.hidden_size}


class SDXLTextEncoder2Component(nn.Module):
    """input_ids -> penultimate_hidden_state, text_embeds (SDXL's second, a CLIPTextModelWithProjection)."""

    def __init__(self, text_encoder: nn.Module):
        super().__init__()
        self.text_encoder = text_encoder

    def forward(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.text_encoder(input_ids, output_hidden_states=True)
        return out.hidden_states[-2], out.text_embeds

    def static_dims(self) -> dict[str, int]:
        c = self.text_encoder.config
        return {"text_dim": c.hidden_size, "pooled_dim": c.projection_dim}


class SDXLUNetComponent(nn.Module):
    """sample, timestep, encoder_hidden_states, text_embeds, time_ids -> noise_pred (SDXL's UNet with its
    ``text_time`` added conditions). ``time_ids``: 6 (original size, crop, target size) or 5 (the refiner's
    aesthetic score in place of the target size): the UNet's layer takes either, the pipeline's config says."""

    def __init__(self, unet: nn.Module, time_ids: int = 6):
        super().__init__()
        self.unet, self.time_ids = unet, time_ids

    def forward(self, sample, timestep, encoder_hidden_states, text_embeds, time_ids) -> torch.Tensor:
        cond = {"text_embeds": text_embeds, "time_ids": time_ids}
        return self.unet(sample, timestep, encoder_hidden_states, added_cond_kwargs=cond, return_dict=False)[0]

    def static_dims(self) -> dict[str, int]:
        c = self.unet.config
        pooled = self.unet.add_embedding.linear_1.in_features - c.addition_time_embed_dim * self.time_ids
        return {"unet_in_channels": c.in_channels, "latent_channels": c.out_channels,
                "text_dim": c.cross_attention_dim, "pooled_dim": pooled, "time_ids_dim": self.time_ids}


class FluxTextEncoderComponent(nn.Module):
    """input_ids -> pooler_output (FLUX's CLIPTextModel: only its pooled embedding is used)."""

    def __init__(self, text_encoder: nn.Module):
        super().__init__()
        self.text_encoder = text_encoder

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.text_encoder(input_ids, output_hidden_states=False).pooler_output

    def static_dims(self) -> dict[str, int]:
        return {"pooled_dim": self.text_encoder.config.hidden_size}


class T5EncoderComponent(nn.Module):
    """input_ids -> last_hidden_state (FLUX's T5EncoderModel). ``text_len``: the length to export for (T5 runs
    any; FLUX.1's pipelines pad to 512)."""

    def __init__(self, text_encoder: nn.Module, text_len: int | None = None):
        super().__init__()
        self.text_encoder, self.text_len = text_encoder, text_len

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.text_encoder(input_ids, output_hidden_states=False)[0]

    def static_dims(self) -> dict[str, int]:
        return {"text_dim": self.text_encoder.config.d_model, **_text_len(self.text_len)}


class FluxTransformerComponent(nn.Module):
    """sample, masked_latent, mask, timestep, guidance, encoder_hidden_states, pooled_projections -> noise_pred
    (FLUX.1 Fill's ``FluxTransformer2DModel``).

    The latents come and go on their (h, w) grid, diffusion space; inside, they are packed into 2x2 tokens
    with the masked image's latents and the mask folded 8x8 per latent cell (diffusers' ``FluxFillPipeline``
    concatenates the same), and the RoPE ids are made from h, w and the text length. So an exported graph
    takes the same dynamic h / w as every other component, and the flow-matching step (elementwise) runs on
    the unpacked latents. ``timestep`` is the scheduler's t (0..1000), divided here as diffusers does.
    """

    def __init__(self, transformer: nn.Module, text_len: int | None = None):
        super().__init__()
        self.transformer, self.text_len = transformer, text_len

    def forward(self, sample, masked_latent, mask, timestep, guidance, encoder_hidden_states, pooled_projections):
        h, w = sample.shape[-2:]
        hidden = torch.cat([pack_flux_latents(sample), pack_flux_latents(masked_latent), pack_flux_mask(mask)], dim=-1)
        rows = torch.arange(h // PATCH, device=sample.device, dtype=sample.dtype)
        cols = torch.arange(w // PATCH, device=sample.device, dtype=sample.dtype)
        img_ids = torch.stack([torch.zeros(h // PATCH, w // PATCH, device=sample.device, dtype=sample.dtype),
                               rows[:, None].expand(-1, w // PATCH), cols[None, :].expand(h // PATCH, -1)],
                              dim=-1).reshape(-1, 3)  # diffusers' _prepare_latent_image_ids, without in-place ops
        txt_ids = torch.zeros(encoder_hidden_states.shape[1], 3, device=sample.device, dtype=sample.dtype)
        guidance = guidance if self.transformer.config.guidance_embeds else None
        out = self.transformer(hidden_states=hidden, timestep=timestep.to(sample.dtype) / 1000, guidance=guidance,
                               pooled_projections=pooled_projections, encoder_hidden_states=encoder_hidden_states,
                               txt_ids=txt_ids, img_ids=img_ids, return_dict=False)[0]
        # unpack_flux_latents' order, without its checks on Python ints (h and w are symbolic under export)
        out = out.reshape(out.shape[0], h // PATCH, w // PATCH, -1, PATCH, PATCH).permute(0, 3, 1, 4, 2, 5)
        return out.reshape(out.shape[0], -1, h, w)

    def static_dims(self) -> dict[str, int]:
        c = self.transformer.config
        return {"latent_channels": c.out_channels // (PATCH * PATCH), "text_dim": c.joint_attention_dim,
                "pooled_dim": c.pooled_projection_dim, **_text_len(self.text_len)}


# The wrapper of each component of the vocabulary.
WRAPPERS: dict[str, type[nn.Module]] = {
    TEXT_ENCODER: TextEncoderComponent, VAE_ENCODER: VaeEncoderComponent, UNET: UNetComponent,
    DECODER: DecoderComponent, DECODER_PLAIN: PlainDecoderComponent,
    SDXL_TEXT_ENCODER: SDXLTextEncoderComponent, SDXL_TEXT_ENCODER_2: SDXLTextEncoder2Component,
    SDXL_UNET: SDXLUNetComponent, T5_ENCODER: T5EncoderComponent, FLUX_TEXT_ENCODER: FluxTextEncoderComponent,
    FLUX_TRANSFORMER: FluxTransformerComponent,
}
