"""The one interface every engine format implements, and the I/O names of each component.

An engine maps named input tensors to named output tensors. The runtime's stages only ever
call ``engine(**feeds)``; torch modules, ONNX Runtime sessions and TensorRT plans all look
the same from there. Names are fixed here so export, engines and runtime agree.
"""
from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch

# component -> (input names, output names). Shapes, by convention:
#   decoder:        latent (B,4,h,w) VAE-space (already / scaling_factor), image (B,3,8h,8w) in [-1,1],
#                   mask (B,1,8h,8w) float 0/1 (1 = hole)           -> sample (B,3,8h,8w) in [-1,1]
#   decoder-plain:  latent                                          -> sample
#   unet:           sample (B,9|4,h,w), timestep (B,) or (), encoder_hidden_states (B,77,D) -> noise_pred (B,4,h,w)
#   vae-encoder:    image (B,3,H,W) in [-1,1]                       -> moments (B,8,h,w) (mean, logvar)
#   text-encoder:   input_ids (B,77) int64                           -> last_hidden_state (B,77,D)
COMPONENT_IO: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "decoder": (("latent", "image", "mask"), ("sample",)),
    "decoder-plain": (("latent",), ("sample",)),
    "unet": (("sample", "timestep", "encoder_hidden_states"), ("noise_pred",)),
    "vae-encoder": (("image",), ("moments",)),
    "text-encoder": (("input_ids",), ("last_hidden_state",)),
}


@runtime_checkable
class Engine(Protocol):
    """A compiled or wrapped network: ``engine(**feeds) -> {output_name: tensor}``."""

    component: str
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]

    def __call__(self, **feeds: torch.Tensor) -> dict[str, torch.Tensor]: ...
