"""The condition branch: a light conv encoder over the masked image.

Five layers (c = block_out_channels[0], 4c = block_out_channels[-1]):
L0 3x3 s1 (3 -> c), L1 3x3 s1 (c -> 2c), L2 4x4 s2 (2c -> 4c, H/2), L3 4x4 s2 (-> 4c, H/4),
L4 4x4 s2 (-> 4c, H/8). Each feature is kept before its ReLU; ReLU feeds the next layer.
Features are returned as a list indexed by layer, never a dict keyed by shapes (that is what
breaks export and batch broadcasting in the reference implementations).

``partial=True`` turns every layer into NVIDIA's single-channel-mask partial convolution
(Liu et al. 2018), the PConv2d of the paper's tables:
``out = (conv(X*M) - b) * (kh*kw / sum(M)) * [sum(M) > 0] + b * [sum(M) > 0]``, updated mask
``[sum(M) > 0]``, with M = 1 on valid (kept) pixels. The ratio is computed in fp32 because
the 1e-8 guard underflows in fp16 (inf * 0 = NaN).

ASUKA's branch (``kind="asuka"``, Wang et al. CVPR 2025) has the same five layers; its input is the
masked image with the mask concatenated as a 4th channel, and its level masks are the full mask
area-averaged to the level's size with every covered cell set to 1 (the Asymmetric VQGAN resizes
nearest). ``gated=True`` is its optional gated conv: each layer makes twice the channels, split
into ``x, g``, and keeps ``x * clamp(1 - tanh(g), 0, 1)``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from asymvq.kernels.partial_ratio import partial_conv_ratio

# (kernel, stride, padding) of L0..L4
LAYER_GEOMETRY = ((3, 1, 1), (3, 1, 1), (4, 2, 1), (4, 2, 1), (4, 2, 1))
# L0..L4 feature resolution divisors
LAYER_STRIDE = (1, 1, 2, 4, 8)


def partial_conv2d(conv: nn.Conv2d, x: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """NVIDIA PartialConv2d (multi_channel=False, return_mask=True) with ``conv``'s weights."""
    k, s, p = conv.kernel_size[0], conv.stride[0], conv.padding[0]
    ratio, updated = partial_conv_ratio(valid, k, s, p)
    raw = F.conv2d(x * valid.to(x.dtype), conv.weight, None, s, p)
    out = raw.float() * ratio
    if conv.bias is not None:
        out = out + conv.bias.float().view(1, -1, 1, 1) * updated
    return out.to(x.dtype), updated


def level_mask(mask: torch.Tensor, stride: int, mode: str) -> torch.Tensor:
    """The 0/1 hole ``mask`` (B, 1, H, W) at a blend point ``stride`` times smaller.

    ``"nearest"``: ``F.interpolate(mode="nearest")`` at an integer factor, i.e. every stride-th pixel.
    ``"any"``: the area average with every value > 0 set to 1; on a 0/1 mask that is the max over the
    cell, written as a max-pool (exact, and one ONNX MaxPool).
    """
    if stride == 1:
        return mask
    if mode == "any":
        return F.max_pool2d(mask, stride)
    return mask[:, :, ::stride, ::stride]


class ConditionEncoder(nn.Module):
    def __init__(self, channels: tuple[int, ...], in_channels: int = 3, partial: bool = False,
                 kind: str = "conv", gated: bool = False):
        super().__init__()
        self.partial = partial
        self.concat_mask = kind == "asuka"
        self.mask_mode = "any" if kind == "asuka" else "nearest"
        self.gated = gated
        layers, cin = [], in_channels
        for cout, (k, s, p) in zip(channels, LAYER_GEOMETRY):
            layers.append(nn.Conv2d(cin, cout * (2 if gated else 1), k, stride=s, padding=p))
            cin = cout
        self.layers = nn.Sequential(*layers)

    def branch_input(self, image: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x, valid)``: the branch's input from the unmasked image and the 0/1 hole mask.

        x = ``(1 - mask) * image``, with the mask concatenated as a channel for ASUKA's branch;
        ``valid = 1 - mask`` (what partial convolution reads)."""
        valid = 1 - mask
        x = valid * image
        if self.concat_mask:
            x = torch.cat([x, mask.expand(x.shape[0], -1, -1, -1)], dim=1)
        return x, valid

    def level_mask(self, mask: torch.Tensor, stride: int) -> torch.Tensor:
        return level_mask(mask, stride, self.mask_mode)

    def reference_forward(self, masked_image: torch.Tensor, valid: torch.Tensor) -> list[torch.Tensor]:
        """Pre-ReLU features L0..L4. ``valid`` = 1 - hole mask, (B, 1, H, W); used by partial conv."""
        feats, x = [], masked_image
        for i, layer in enumerate(self.layers):
            if i:
                x = torch.relu(x)
            if self.partial:
                x, valid = partial_conv2d(layer, x, valid)
            else:
                x = layer(x)
            if self.gated:
                x, g = x.chunk(2, dim=1)
                x = x * torch.clamp(1 - torch.tanh(g), 0, 1)
            feats.append(x)
        return feats
