"""AsymmetricDecoder: the SD VAE decoder plus the mask-conditioned branch, export-friendly.

What the latents must be: ``forward`` takes latents in the VAE's own space, i.e. what the
diffusion loop produces *divided by* ``config.scaling_factor`` (0.18215 for SD; plus
``config.shift_factor`` where a VAE has one), exactly what diffusers' ``vae.decode`` takes.
``decode_scaled`` takes the diffusion-space latents and converts them for you
(``config.latent_space``). ``post_quant_conv`` (1x1) runs first in both, where the VAE has one
(SD, SDXL; not SD3 or FLUX).

With ``image`` and ``mask`` it blends the condition features into the decoder at five
points (inputs of the H/8, H/4, H/2 and H levels, and before ``conv_norm_out``); without
them it is a plain decoder (the paper's text-to-image mode).
"""
from __future__ import annotations

import torch
from torch import nn

from .blocks import MidBlock, UpBlock, _UsesOps
from .condition import ConditionEncoder
from .config import DecoderConfig, preset_config
from .inputs import check_condition, check_latents
from .op_select import select_ops
from .ops import TORCH_OPS, TorchOps
from .tiled_decode import decode_modes

# Resolution divisor of the decoder's level inputs (up_blocks[0..3]) and of the final blend,
# and the condition layer blended there.
BLEND_POINTS = ((8, 4), (4, 3), (2, 2), (1, 1), (1, 0))


class AsymmetricDecoder(_UsesOps):
    def __init__(self, config: DecoderConfig | str = "base"):
        super().__init__()
        if isinstance(config, str):
            config = preset_config(config)
        self.config = config
        ch, groups = config.block_out_channels, config.norm_num_groups
        # SD3 / FLUX VAEs have no post-quant conv: None, so it is neither a weight nor a traced op.
        self.post_quant_conv = (nn.Conv2d(config.latent_channels, config.latent_channels, 1)
                                if config.post_quant_conv else None)
        self.conv_in = nn.Conv2d(config.latent_channels, ch[-1], 3, padding=1)
        self.mid_block = MidBlock(ch[-1], groups)
        rev = list(reversed(ch))
        self.up_blocks = nn.ModuleList(
            UpBlock(rev[max(i - 1, 0)], rev[i], config.layers_per_block + 1, groups, upsample=i < 3)
            for i in range(4)
        )
        self.condition_encoder = (
            ConditionEncoder(config.condition_channels, config.condition_in_channels,
                             partial=config.condition == "partial", kind=config.condition, gated=config.gate_conv)
            if config.has_condition
            else None
        )
        self.conv_norm_out = nn.GroupNorm(groups, ch[0], eps=1e-6)
        self.conv_out = nn.Conv2d(ch[0], config.out_channels, 3, padding=1)
        self.ops = TORCH_OPS

    # -- kernels -------------------------------------------------------------------------
    def set_ops(self, ops: TorchOps) -> "AsymmetricDecoder":
        """Route the swappable ops (norm+SiLU, blends, condition branch) through ``ops``."""
        self.ops = ops
        for m in self.modules():
            if isinstance(m, _UsesOps):
                m.ops = ops
        return self

    def set_kernels(self, kernels: str) -> "AsymmetricDecoder":
        """``"torch"`` (reference) or ``"triton"`` (fused kernels; falls back with a warning)."""
        return self.set_ops(select_ops(kernels))

    @property
    def kernels(self) -> str:
        return self._ops.name

    # -- forward -------------------------------------------------------------------------
    def forward(self, latents: torch.Tensor, image: torch.Tensor | None = None, mask: torch.Tensor | None = None, *,
                tile: int | None = None, overlap: int | None = None, region: str | None = None,
                margin: int | None = None, region_stats: str | None = None) -> torch.Tensor:
        """Decode VAE-space latents (already divided by the scaling factor) to images in [-1, 1].

        latents: (B, C, h, w), C = ``config.latent_channels`` (4 or 16). image: (B or 1, 3, 8h, 8w) unmasked source in [-1, 1].
        mask: (B or 1, 1 or 3, 8h, 8w), 1 = hole, binary (see ``asymvq.models.inputs``).
        ``tile``/``overlap`` (latent pixels): tiled decode with image-wide GroupNorm statistics,
        memory bounded by the tile. ``region="mask"``/``margin``: decode only the mask's box grown
        by ``margin`` latent pixels, the rest is the source; ``region_stats``: the GroupNorm statistics
        the box is normalised with, ``"box"`` (default: its own) or ``"lowres"`` (the whole image's, estimated;
        ``asymvq.models.region_stats``). See ``asymvq.models.tiled_decode``.
        """
        weight = self.conv_in.weight  # any float latents/image are cast to the decoder's dtype
        latents = check_latents(latents, self.config.latent_channels, dtype=weight.dtype, device=weight.device)
        image, mask = check_condition(latents, image, mask)
        if image is not None and self.condition_encoder is None:
            raise ValueError("image/mask: this decoder has no condition branch (preset 'vanilla'); pass neither")
        source = image  # a region decode pastes the source as given: a bf16 decoder leaves it unrounded
        if image is not None:
            dtype = self.conv_in.weight.dtype
            image, mask = image.to(dtype), mask.to(dtype)
        modes = dict(tile=tile, overlap=overlap, region=region, margin=margin, region_stats=region_stats)
        if any(v is not None for v in modes.values()):
            return decode_modes(self, latents, image, mask, **modes, source=source)
        return self.decode_core(latents, image, mask)

    def decode_scaled(self, latents: torch.Tensor, image=None, mask=None, **modes) -> torch.Tensor:
        """Decode diffusion-space latents (what the UNet loop yields): ``z / scaling_factor + shift_factor``
        (``config.latent_space``). ``modes``: ``tile``, ``overlap``, ``region``, ``margin``, ``region_stats`` as in ``forward``."""
        check_latents(latents, self.config.latent_channels)  # before dividing: integer latents stay refused
        return self(self.config.latent_space.to_vae(latents), image, mask, **modes)

    def decode_core(self, latents: torch.Tensor, image: torch.Tensor | None, mask: torch.Tensor | None) -> torch.Tensor:
        """The traced graph: no input checks, no control flow on values. ``mask`` is 0/1 float, 1 channel."""
        return self.decode_up(self.decode_head(latents), image, mask)

    def decode_head(self, latents: torch.Tensor) -> torch.Tensor:
        """post_quant_conv (where the VAE has one), conv_in and the mid block, at latent resolution: the
        part with a global self-attention, which the tiled decode runs on the whole image."""
        if self.post_quant_conv is not None:
            latents = self.post_quant_conv(latents)
        h = self.conv_in(latents)
        h = self.mid_block(h)
        return h.to(self.up_blocks[0].resnets[0].conv1.weight.dtype)

    def decode_up(self, h: torch.Tensor, image: torch.Tensor | None, mask: torch.Tensor | None) -> torch.Tensor:
        """The up path from the mid block's output: convolutions, GroupNorms and blends only (no global
        op), so the tiled decode can run it tile by tile, segment by segment (``tiled_decode``)."""
        if image is None:
            for up in self.up_blocks:
                h = up(h)
            h = self.ops.group_norm_silu(h, self.conv_norm_out)
        else:
            # One op for the branch and the first blend (L4 at H/8): a fused path masks the image
            # as it loads it and blends L4 in its last conv's epilogue. Then blend after each level.
            h, feats = self.ops.condition_blend(self.condition_encoder, image, mask, h)
            for (stride, layer), up in zip(BLEND_POINTS[1:4], self.up_blocks[:3]):
                h = up(h)
                h = self.ops.blend(h, feats[layer], self.condition_encoder.level_mask(mask, stride))
            h = self.up_blocks[3](h)
            # The last blend feeds conv_norm_out only: fused with its statistics where possible.
            h = self.ops.blend_group_norm_silu(h, feats[0], mask, self.conv_norm_out)
        return self.conv_out(h)
