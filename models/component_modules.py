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

from .components import DECODER, DECODER_PLAIN, TEXT_ENCODER, UNET, VAE_ENCODER
from .decoder import AsymmetricDecoder


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


# The wrapper of each component of the vocabulary.
WRAPPERS: dict[str, type[nn.Module]] = {
    TEXT_ENCODER: TextEncoderComponent, VAE_ENCODER: VaeEncoderComponent, UNET: UNetComponent,
    DECODER: DecoderComponent, DECODER_PLAIN: PlainDecoderComponent,
}
