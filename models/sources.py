"""Where a component's weights come from: a seeded random preset or local files, never a download.

One place builds every network the project runs or exports, so the runtime and export
cannot drift apart: ``random_decoder`` (decoder presets), ``load_sd_networks`` (a local
diffusers SD folder: UNet, VAE of either class, CLIP, tokenizer, scheduler config), and
``Source`` + ``build_module`` (one component of the vocabulary wrapped with its signature, what
export traces and the engines directory's torch backend rebuilds) and ``Source.latent_space``
(what an engines directory of its components records).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .checkpoints import decoder_from_vae, load_decoder
from .component_modules import WRAPPERS
from .components import (
    DECODER,
    DECODER_COMPONENTS,
    FAMILY_COMPONENTS,
    FLUX_TEXT_ENCODER,
    FLUX_TRANSFORMER,
    SD,
    SDXL_TEXT_ENCODER,
    SDXL_TEXT_ENCODER_2,
    SDXL_UNET,
    T5_ENCODER,
    TEXT_ENCODER,
    UNET,
    VAE_ENCODER,
)
from .config import PRESETS as DECODER_PRESETS
from .config import preset_config
from .cpu_bf16 import is_cpu_bf16, to_cpu_bf16
from .decoder import AsymmetricDecoder
from .devices import parse_device, parse_dtype
from .family_networks import FAMILY_PRESETS, family_network, family_vae, flux_text_len, preset_family
from .latent_space import LatentSpace
from .op_select import select_ops
from .sd_networks import (
    PRESET_SHAPES,
    SCHEDULER_CONFIG,
    SCHEDULER_FILE,
    SD_PRESETS,
    build_text_encoder,
    build_unet,
    build_vae,
)

VAE_CLASSES = ("AutoencoderKL", "AsymmetricAutoencoderKL")
SD_PARTS = {TEXT_ENCODER: "text_encoder", VAE_ENCODER: "vae", UNET: "unet"}  # component -> diffusers folder
# The other families' components -> the diffusers attribute of their network
FAMILY_PARTS = {SDXL_TEXT_ENCODER: "text_encoder", SDXL_TEXT_ENCODER_2: "text_encoder_2", SDXL_UNET: "unet",
                FLUX_TEXT_ENCODER: "text_encoder", T5_ENCODER: "text_encoder_2", FLUX_TRANSFORMER: "transformer"}


def random_decoder(name: str, *, seed: int = 0, dtype="fp32", device="cpu", kernels: str = "torch") -> AsymmetricDecoder:
    """A seeded random ``AsymmetricDecoder`` of preset ``name`` (vanilla, base, x1.5, x2, tiny), in eval mode."""
    config = preset_config(name)
    torch.manual_seed(seed)
    decoder = AsymmetricDecoder(config).set_ops(select_ops(kernels))
    decoder = decoder.to(device=parse_device(device), dtype=parse_dtype(dtype, device)).eval()
    return to_cpu_bf16(decoder) if is_cpu_bf16(decoder) else decoder  # channels-last, fp32 conv_out


def _need(path: Path, what: str) -> Path:
    if not path.exists():
        raise FileNotFoundError(f"{what} not found: {path}")
    return path


def vae_class(vae_dir: Path):
    """The diffusers VAE class named by ``vae_dir/config.json`` (plain or asymmetric)."""
    from diffusers import AsymmetricAutoencoderKL, AutoencoderKL

    config = _need(Path(vae_dir) / "config.json", "vae config")
    name = json.loads(config.read_text()).get("_class_name", "AutoencoderKL")
    if name not in VAE_CLASSES:
        raise ValueError(f"{config}: expected _class_name among {VAE_CLASSES}, got {name!r}")
    return AsymmetricAutoencoderKL if name == "AsymmetricAutoencoderKL" else AutoencoderKL


def load_sd_part(sd_dir, part: str, dtype=torch.float32):
    """One network of a local diffusers SD folder: "unet", "vae" (either class) or "text_encoder" (SD_PARTS' folders)."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel

    root = Path(sd_dir)
    local = dict(local_files_only=True)
    if part == "unet":
        return UNet2DConditionModel.from_pretrained(_need(root / "unet", "unet folder"), torch_dtype=dtype, **local).eval()
    if part == "vae":
        return vae_class(root / "vae").from_pretrained(root / "vae", torch_dtype=dtype, **local).eval()
    if part == "text_encoder":
        return CLIPTextModel.from_pretrained(_need(root / "text_encoder", "text_encoder folder"), dtype=dtype, **local).eval()
    raise ValueError(f"part must be 'unet', 'vae' or 'text_encoder', got {part!r}")


def load_sd_networks(sd_dir, *, dtype=torch.float32) -> dict:
    """Everything a local diffusers SD (inpainting) folder holds, as plain values.

    unet/ and vae/ are required; text_encoder/ and tokenizer/ are optional (a pipeline
    without them takes prompt embeddings); without scheduler/ SD 1.5's schedule is used.
    """
    from transformers import CLIPTokenizer

    root = Path(sd_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"SD model folder not found: {root}")
    sched_cfg = root / "scheduler" / SCHEDULER_FILE
    return {
        "unet": load_sd_part(root, "unet", dtype),
        "vae": load_sd_part(root, "vae", dtype),
        "text_encoder": load_sd_part(root, "text_encoder", dtype) if (root / "text_encoder").is_dir() else None,
        "tokenizer": CLIPTokenizer.from_pretrained(root / "tokenizer", local_files_only=True)
        if (root / "tokenizer").is_dir() else None,
        "scheduler_config": json.loads(sched_cfg.read_text()) if sched_cfg.is_file() else dict(SCHEDULER_CONFIG),
    }


@dataclass(frozen=True)
class Source:
    """Where the weights come from: seeded random ``preset`` and/or local paths.

    ``preset``: an SD preset (tiny, sd15), a FLUX.1 Fill / SDXL preset (``FAMILY_PRESETS``: their
    networks, VAE encoder and plain decoder from their VAE; export of those families comes from presets
    only) or, for the decoders alone, a decoder preset (vanilla, base, x1.5, x2, tiny). ``model``: a local diffusers SD folder (unet/,
    text_encoder/, vae/). ``decoder``: a decoder checkpoint path or a decoder preset name.
    """

    preset: str | None = None
    model: str | None = None
    decoder: str | None = None
    unet_in_channels: int = 9
    seed: int = 0

    def __post_init__(self):
        if self.preset is None and self.model is None and self.decoder is None:
            raise ValueError("source: give a preset, a --model PATH or a --decoder PATH")
        known = set(SD_PRESETS) | set(DECODER_PRESETS) | set(FAMILY_PRESETS)
        if self.preset is not None and self.preset not in known:
            raise ValueError(f"preset must be one of {sorted(known)}, got {self.preset!r}")
        if self.model is not None and not Path(self.model).is_dir():
            raise ValueError(f"model: expected a local diffusers SD folder (unet/, vae/, text_encoder/), got {self.model!r}")

    @property
    def sd_preset(self) -> str:
        """The SD preset whose shapes apply (tiny for the tiny decoder and the tiny family presets, sd15 otherwise)."""
        tiny_family = self.preset in FAMILY_PRESETS and self.preset.startswith("tiny")
        return "tiny" if self.preset == "tiny" or tiny_family else "sd15"

    @property
    def family(self) -> str:
        """The pipeline family of the networks (``components.FAMILIES``): a family preset's, else SD's."""
        return preset_family(self.preset) if self.preset in FAMILY_PRESETS else SD

    def to_dict(self) -> dict:
        return {"preset": self.preset, "model": self.model, "decoder": self.decoder,
                "unet_in_channels": self.unet_in_channels, "seed": self.seed}

    def decoder_module(self) -> AsymmetricDecoder:
        name = self.decoder
        if name is None and self.model is not None:
            name = str(Path(self.model) / "vae")  # the SD folder's own decoder
        if name is not None and name not in DECODER_PRESETS:
            return load_decoder(name)
        if name is None and self.preset in FAMILY_PRESETS:
            return decoder_from_vae(family_vae(self.preset, seed=self.seed)).eval()  # what the family pipeline decodes with
        if name is None:
            name = PRESET_SHAPES[self.preset]["decoder_preset"] if self.preset in SD_PRESETS else self.preset
        if name is None:
            raise ValueError("decoder: give --decoder PATH|PRESET or a --preset")
        return random_decoder(name, seed=self.seed)

    def sd_part(self, part: str):
        if self.preset in FAMILY_PRESETS and self.model is None:
            return family_network(self.preset, part, seed=self.seed, in_channels=self.unet_in_channels)
        if self.model is not None:
            return load_sd_part(self.model, part)
        if self.preset not in SD_PRESETS:
            raise ValueError(f"preset: the {part} needs an SD preset {list(SD_PRESETS)} or --model PATH, got {self.preset!r}")
        if part == "unet":
            return build_unet(self.preset, in_channels=self.unet_in_channels, seed=self.seed)
        return {"vae": build_vae, "text_encoder": build_text_encoder}[part](self.preset, seed=self.seed)

    def sd_latent_space(self) -> LatentSpace:
        """The SD VAE's latent space: the preset's, or the model folder's ``vae/config.json``."""
        if self.model is not None:
            config = _need(Path(self.model) / "vae" / "config.json", "vae config")
            return LatentSpace.from_vae_config(json.loads(config.read_text()))
        if self.preset in FAMILY_PRESETS:
            return LatentSpace.from_vae_config(dict(family_vae(self.preset, seed=self.seed).config))
        if self.preset not in SD_PRESETS:
            raise ValueError(f"preset: the SD components need an SD preset {list(SD_PRESETS)} or --model PATH, "
                             f"got {self.preset!r}")
        return PRESET_SHAPES[self.preset]["latent_space"]

    def latent_space(self, components) -> LatentSpace:
        """The latent space of an engines directory holding ``components`` of this source: the SD VAE's
        for the SD networks, the decoder's for the decoders; both there, they must be the same."""
        sd = [c for c in components if c not in DECODER_COMPONENTS]
        vae = self.sd_latent_space() if sd else None
        if len(sd) == len(components):
            return vae
        decoder = self.decoder_module().config.latent_space
        if vae is not None and decoder != vae:
            raise ValueError(f"decoder: it decodes the latent space {decoder}, but the SD VAE's is {vae}; give a "
                             "decoder trained for this VAE's latents")
        return decoder


def build_module(component: str, source: Source) -> nn.Module:
    """The fp32 wrapper module of ``component`` (eval mode) with the I/O of the vocabulary."""
    if component in DECODER_COMPONENTS:
        network = source.decoder_module()
        if component == DECODER and network.condition_encoder is None:
            raise ValueError("decoder: this decoder has no condition branch (a plain SD VAE decoder); export "
                             "'decoder-plain', or give an asymmetric decoder with --decoder PATH|PRESET")
    elif component not in FAMILY_COMPONENTS[source.family]:
        raise ValueError(f"component: {component!r} is not a network of the {source.family} family "
                         f"(its components: {list(FAMILY_COMPONENTS[source.family])})")
    elif component in SD_PARTS:
        network = source.sd_part(SD_PARTS[component])
    elif component in FAMILY_PARTS:
        network = source.sd_part(FAMILY_PARTS[component])
        if component == T5_ENCODER:
            # T5's SDPA path reshapes a transposed view that torch.export's ONNX decomposition cannot view
            # (transformers 4.5x); its eager attention exports, with the same weights (this network is ours alone)
            network.config._attn_implementation = "eager"
        if component in (T5_ENCODER, FLUX_TRANSFORMER):  # exported for the preset's T5 length
            return WRAPPERS[component](network, text_len=flux_text_len(source.preset)).eval()
    else:
        raise ValueError(f"component: no network is built under the name {component!r}")
    return WRAPPERS[component](network).eval()
