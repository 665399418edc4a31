"""The component vocabulary: each network the pipeline runs, with its inputs and outputs, as typed data.

This is the one place that names the components and their I/O. It sits at the bottom of the
tree (models/ imports nothing above it), so every layer reads the same table:
``component_modules`` wraps each network with these inputs as its ``forward`` signature,
``asymvq.engines.contract`` derives ``COMPONENT_IO`` from it and checks artifacts against it,
the manifest reader takes each tensor's rank from it, ``asymvq.export.specs`` binds its dims
to sizes, and the C++ host's table (host/engines.cpp) is checked against it by
tests/test_architecture.py.

Dims are ints (fixed sizes) or names. ``batch``, ``h`` and ``w`` (latent pixels) vary per
call; ``8*h`` is a multiple of one of them (image pixels, 8 = the VAE factor). The other
names are fixed per network and bound at export (``bind_dims``): ``latent_channels`` (the
latent space's), ``unet_in_channels``, ``text_len``, ``text_dim``, ``pooled_dim`` (a pooled text
embedding's width) and ``time_ids_dim`` (SDXL's added size ids: 6, or 5 with the aesthetic score);
``2*latent_channels`` is twice a bound name (the VAE encoder's mean and log-variance).

The families (``FAMILIES``: SD 1.x, SDXL, FLUX.1 Fill) share the VAE encoder and the decoders and each
has its own denoiser and text encoders; ``FAMILY_COMPONENTS`` says which components make each one's
pipeline (what ``asymvq export --component all`` writes and an engines directory of that family holds).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from .latent_space import VAE_SCALE_FACTOR

TEXT_ENCODER, VAE_ENCODER, UNET, DECODER, DECODER_PLAIN = "text-encoder", "vae-encoder", "unet", "decoder", "decoder-plain"
# SDXL: its UNet with the added conditions and its two CLIP encoders (penultimate hidden states; pooled of the 2nd)
SDXL_UNET, SDXL_TEXT_ENCODER, SDXL_TEXT_ENCODER_2 = "sdxl-unet", "sdxl-text-encoder", "sdxl-text-encoder-2"
# FLUX.1 Fill: the transformer (packing, RoPE ids and the folded mask inside), CLIP's pooled output, T5
FLUX_TRANSFORMER, FLUX_TEXT_ENCODER, T5_ENCODER = "flux-transformer", "flux-text-encoder", "t5-encoder"
SD, SDXL, FLUX_FILL = "sd", "sdxl", "flux-fill"
FAMILIES = (SD, SDXL, FLUX_FILL)

# Dtype kinds: FLOAT follows the engine's precision (float32 or float16); the others are fixed.
FLOAT, FLOAT32, INT64 = "float", "float32", "int64"
DTYPE_KINDS = (FLOAT, FLOAT32, INT64)
# Value domains: what an input holds (what example inputs draw and the pipeline feeds).
REAL, SIGNED_UNIT, BINARY, TOKEN_IDS, TIMESTEPS = "real", "[-1, 1]", "{0, 1}", "token ids", "timesteps"
DOMAINS = (REAL, SIGNED_UNIT, BINARY, TOKEN_IDS, TIMESTEPS)
DYNAMIC_DIMS = ("batch", "h", "w")  # vary per call; everything else is bound at export
STATIC_DIMS = ("latent_channels", "unet_in_channels", "text_len", "text_dim", "pooled_dim", "time_ids_dim")

_DERIVED = re.compile(r"^(\d+)\*(\w+)$")


def split_dim(dim: str) -> tuple[int, str]:
    """A symbolic dim as (factor, base): ``"8*h"`` -> (8, "h"); ``"h"`` -> (1, "h")."""
    m = _DERIVED.match(dim)
    return (int(m.group(1)), m.group(2)) if m else (1, dim)


@dataclass(frozen=True)
class TensorIO:
    """One input or output of a component: its name, dtype kind and symbolic dims."""

    name: str
    kind: str  # FLOAT, FLOAT32 or INT64
    dims: tuple[int | str, ...]
    domain: str = REAL
    scalar_ok: bool = False  # a 0-d tensor is accepted too (one timestep for the whole batch)

    def __post_init__(self):
        if self.kind not in DTYPE_KINDS:
            raise ValueError(f"kind must be one of {DTYPE_KINDS}, got {self.kind!r}")
        if self.domain not in DOMAINS:
            raise ValueError(f"domain must be one of {DOMAINS}, got {self.domain!r}")
        for d in self.dims:
            if isinstance(d, str) and split_dim(d)[1] not in DYNAMIC_DIMS + STATIC_DIMS:
                raise ValueError(f"{self.name}: dim {d!r} names none of {DYNAMIC_DIMS + STATIC_DIMS}")

    @property
    def ranks(self) -> tuple[int, ...]:
        """The numbers of dims an engine's spec of this tensor may have."""
        return (0, len(self.dims)) if self.scalar_ok else (len(self.dims),)

    def dtype(self, float_dtype: str) -> str:
        """The torch dtype name (float32, float16, int64) at a precision whose float dtype is ``float_dtype``."""
        return float_dtype if self.kind == FLOAT else self.kind

    def bind_dims(self, sizes: dict[str, int]) -> tuple[int | str, ...]:
        """The dims with the static names replaced by ``sizes`` (the dynamic ones stay symbolic)."""
        out = []
        for d in self.dims:
            if isinstance(d, str) and split_dim(d)[1] in STATIC_DIMS:
                factor, base = split_dim(d)
                if base not in sizes:
                    raise ValueError(f"{self.name}: no size bound for dim {base!r}")
                d = factor * sizes[base]
            out.append(d)
        return tuple(out)


@dataclass(frozen=True)
class Component:
    """A network with a fixed signature: named tensors in, named tensors out."""

    name: str
    inputs: tuple[TensorIO, ...]
    outputs: tuple[TensorIO, ...]

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.inputs)

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.outputs)

    def tensor(self, name: str) -> TensorIO | None:
        """The input or output called ``name``, or None."""
        return next((t for t in self.inputs + self.outputs if t.name == name), None)


_PIXELS = (f"{VAE_SCALE_FACTOR}*h", f"{VAE_SCALE_FACTOR}*w")
LATENT = TensorIO("latent", FLOAT, ("batch", "latent_channels", "h", "w"))  # VAE space: already z / scale + shift
IMAGE = TensorIO("image", FLOAT, ("batch", 3, *_PIXELS), SIGNED_UNIT)  # the unmasked source
MASK = TensorIO("mask", FLOAT, ("batch", 1, *_PIXELS), BINARY)  # float 0/1, 1 = hole
SAMPLE = TensorIO("sample", FLOAT, ("batch", 3, *_PIXELS), SIGNED_UNIT)  # the decoded image
TEXT_HIDDEN = ("batch", "text_len", "text_dim")
INPUT_IDS = TensorIO("input_ids", INT64, ("batch", "text_len"), TOKEN_IDS)
TIMESTEP = TensorIO("timestep", FLOAT32, ("batch",), TIMESTEPS, scalar_ok=True)  # the scheduler's t, 0..1000
ENCODER_HIDDEN = TensorIO("encoder_hidden_states", FLOAT, TEXT_HIDDEN)
NOISE_PRED = TensorIO("noise_pred", FLOAT, ("batch", "latent_channels", "h", "w"))
POOLED = ("batch", "pooled_dim")

# In pipeline order.
VOCABULARY: dict[str, Component] = {c.name: c for c in (
    Component(TEXT_ENCODER, (INPUT_IDS,), (TensorIO("last_hidden_state", FLOAT, TEXT_HIDDEN),)),
    Component(VAE_ENCODER, (IMAGE,), (TensorIO("moments", FLOAT, ("batch", "2*latent_channels", "h", "w")),)),
    Component(UNET, (TensorIO("sample", FLOAT, ("batch", "unet_in_channels", "h", "w")), TIMESTEP, ENCODER_HIDDEN),
              (NOISE_PRED,)),
    Component(DECODER, (LATENT, IMAGE, MASK), (SAMPLE,)),
    Component(DECODER_PLAIN, (LATENT,), (SAMPLE,)),
    # SDXL: encoder_hidden_states are both encoders' penultimate states concatenated (text_dim 2048)
    Component(SDXL_TEXT_ENCODER, (INPUT_IDS,), (TensorIO("penultimate_hidden_state", FLOAT, TEXT_HIDDEN),)),
    Component(SDXL_TEXT_ENCODER_2, (INPUT_IDS,), (TensorIO("penultimate_hidden_state", FLOAT, TEXT_HIDDEN),
                                                  TensorIO("text_embeds", FLOAT, POOLED))),
    Component(SDXL_UNET, (TensorIO("sample", FLOAT, ("batch", "unet_in_channels", "h", "w")), TIMESTEP, ENCODER_HIDDEN,
                          TensorIO("text_embeds", FLOAT, POOLED), TensorIO("time_ids", FLOAT, ("batch", "time_ids_dim"))),
              (NOISE_PRED,)),
    # FLUX.1 Fill: latents on their (h, w) grid, packed into 2x2 tokens inside with the masked image's latents
    # and the mask folded 8x8 per latent cell; the RoPE ids follow from h, w and text_len
    Component(T5_ENCODER, (INPUT_IDS,), (TensorIO("last_hidden_state", FLOAT, TEXT_HIDDEN),)),
    Component(FLUX_TEXT_ENCODER, (INPUT_IDS,), (TensorIO("pooler_output", FLOAT, POOLED),)),
    Component(FLUX_TRANSFORMER, (TensorIO("sample", FLOAT, ("batch", "latent_channels", "h", "w")),
                                 TensorIO("masked_latent", FLOAT, ("batch", "latent_channels", "h", "w")), MASK,
                                 TIMESTEP, TensorIO("guidance", FLOAT32, ("batch",), scalar_ok=True), ENCODER_HIDDEN,
                                 TensorIO("pooled_projections", FLOAT, POOLED)),
              (NOISE_PRED,)),
)}
DECODER_COMPONENTS = (DECODER, DECODER_PLAIN)
# Each family's pipeline, in pipeline order; its denoiser (what tells an engines directory's family).
FAMILY_COMPONENTS: dict[str, tuple[str, ...]] = {
    SD: (TEXT_ENCODER, VAE_ENCODER, UNET, DECODER, DECODER_PLAIN),
    SDXL: (SDXL_TEXT_ENCODER, SDXL_TEXT_ENCODER_2, VAE_ENCODER, SDXL_UNET, DECODER, DECODER_PLAIN),
    FLUX_FILL: (FLUX_TEXT_ENCODER, T5_ENCODER, VAE_ENCODER, FLUX_TRANSFORMER, DECODER, DECODER_PLAIN),
}
DENOISERS = {SD: UNET, SDXL: SDXL_UNET, FLUX_FILL: FLUX_TRANSFORMER}
CFG_DENOISERS = (UNET, SDXL_UNET)  # run on twice the batch under classifier-free guidance (FLUX's is distilled)


def family_of_components(components) -> str:
    """The family whose denoiser is among ``components`` (SD for a directory of decoders / encoders alone)."""
    found = [f for f, d in DENOISERS.items() if d in components]
    if len(found) > 1:
        raise ValueError(f"components: {sorted(components)} hold the denoisers of {found}; one family at a time")
    if found:
        return found[0]
    other = [f for f in (SDXL, FLUX_FILL) if set(components) & (set(FAMILY_COMPONENTS[f]) - set(FAMILY_COMPONENTS[SD]))]
    return other[0] if len(other) == 1 else SD
