"""The decoder's op table on the fused Triton kernels (``kernels="triton"``).

What runs fused (asymvq.kernels), against the reference sequence in ``TorchOps``:
- the condition branch: each layer is one implicit-GEMM conv; L0 masks the image as it loads
  it (``valid * image`` is never written), every layer but the last also writes the ReLU'd
  copy the next layer reads, partial convolution keeps its fp32 ratio and updated mask in the
  same kernel, and L4 blends into the decoder at H/8 in its epilogue (L4 is never written);
- the three level blends, sampling the full-resolution mask by index arithmetic;
- not ASUKA's branch (mask as a 4th input channel, area-any level masks, optional gates): its five
  convs run on the reference path, its blends and norms fused;
- every GroupNorm + SiLU, and the last blend fused into conv_norm_out's statistics.
The decoder's own convolutions stay on cuDNN: a Triton conv only pays where it fuses.

Activations are handled channels-last (C innermost): run the decoder with
``decoder.to(memory_format=torch.channels_last)`` so that cuDNN produces channels-last
tensors too; otherwise each fused op starts with a layout copy.
"""
from __future__ import annotations

import warnings

import torch
from torch import nn

from .extras import missing_extra
from .ops import TORCH_OPS, TorchOps


def _cl(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous(memory_format=torch.channels_last)


class TritonOps(TorchOps):
    name = "triton"

    def __init__(self):
        # No kernels submodule is named like these functions any more (blend lives in mask_blend.py):
        # importing one used to shadow the lazily exported function of the same name.
        from asymvq.kernels import blend, conv2d_fused, group_norm_silu, interpreting  # defers the triton extra

        self._interpreting = interpreting()
        self._blend, self._conv, self._gn = blend, conv2d_fused, group_norm_silu
        self._warned = False

    def _runs_on(self, t: torch.Tensor) -> bool:
        """Whether the kernels can take ``t``; warn once and use the reference when not."""
        ok = t.device.type == ("cpu" if self._interpreting else "cuda")
        if not ok and not self._warned:
            mode = "the Triton interpreter (CPU tensors)" if self._interpreting else "CUDA tensors"
            warnings.warn(
                f"kernels='triton': the kernels were set up for {mode} but the decoder runs on "
                f"{t.device}; using the torch reference ops for it",
                RuntimeWarning,
                stacklevel=3,
            )
            self._warned = True
        return ok

    def group_norm_silu(self, x: torch.Tensor, norm: nn.GroupNorm) -> torch.Tensor:
        if norm.weight is None or not self._runs_on(x):
            return super().group_norm_silu(x, norm)
        return self._gn(_cl(x), norm.weight, norm.bias, norm.num_groups, norm.eps)

    def blend(self, h: torch.Tensor, f: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        if not self._runs_on(h):
            return super().blend(h, f, m)
        if f.shape[0] != h.shape[0]:  # batch-1 features broadcast over the latent batch
            f = f.expand(h.shape[0], -1, -1, -1)
        return self._blend(_cl(h), _cl(f), m)

    def blend_group_norm_silu(self, h, f, m, norm):
        if norm.weight is None or not self._runs_on(h):
            return super().blend_group_norm_silu(h, f, m, norm)
        if f.shape[0] != h.shape[0]:
            f = f.expand(h.shape[0], -1, -1, -1)
        return self._gn(_cl(h), norm.weight, norm.bias, norm.num_groups, norm.eps, blend_with=_cl(f), blend_mask=m)

    def condition_features(self, encoder, masked_image, valid):
        if encoder.concat_mask or encoder.gated or not self._runs_on(masked_image):
            return super().condition_features(encoder, masked_image, valid)
        # Masking the already-masked image again on load is exact (0/1 mask) and gives partial
        # convolution the mask it needs in the same kernel.
        return self._condition(encoder, masked_image, valid, mask_is_hole=False)

    def condition_blend(self, encoder, image, mask, h):
        if encoder.concat_mask or encoder.gated or not self._runs_on(h):
            # ASUKA's branch: its L4 blend needs the area-any mask (the fused epilogue samples the
            # full mask nearest) and its first layer reads the mask as a 4th channel, so the branch
            # runs on the reference convs; its level blends and every GroupNorm stay fused.
            return super().condition_blend(encoder, image, mask, h)
        # The fused blend pairs feature and decoder batch for batch; a batch-1 image or mask
        # for a batch of latents is expanded (the reference broadcasts inside the blend).
        b = h.shape[0]
        if image.shape[0] != b:
            image = image.expand(b, -1, -1, -1)
        feats = self._condition(encoder, image, mask, mask_is_hole=True, h=h, blend_mask=mask)
        return feats[-1], feats[:-1]

    def _condition(self, encoder, x, mask, mask_is_hole, h=None, blend_mask=None):
        """Features L0..L4 (pre-ReLU); with ``h``, the last entry is h blended with L4 instead."""
        layers = list(encoder.layers)
        x, load_mask, feats = _cl(x), mask, []
        for i, layer in enumerate(layers):
            last = i == len(layers) - 1
            fuse_blend = last and h is not None
            r = self._conv(
                x,
                _cl(layer.weight),
                layer.bias,
                stride=layer.stride[0],
                padding=layer.padding[0],
                in_mask=load_mask if (i == 0 or encoder.partial) else None,
                in_mask_is_hole=mask_is_hole and i == 0,
                partial=encoder.partial,
                relu_out=not last,
                blend_with=_cl(h) if fuse_blend else None,
                blend_mask=blend_mask if fuse_blend else None,
            )
            feats.append(r.out)
            x = r.relu
            if encoder.partial:
                load_mask = r.mask
        return feats


def make_triton_ops() -> TorchOps:
    """The Triton op table, or the torch reference with a warning saying why it cannot run here."""
    try:
        from asymvq.kernels import can_run  # defers the triton extra
    except ImportError as e:
        raise missing_extra("triton", "kernels='triton'", e) from None
    ok, why = can_run()
    if not ok:
        warnings.warn(f"kernels='triton' cannot run here: {why}. Using the torch reference ops.", RuntimeWarning, stacklevel=3)
        return TORCH_OPS
    return TritonOps()
