"""bf16 decoding on the CPU: bf16 weights and activations in channels-last, the output conv in fp32.

What ``--dtype bf16`` means for the decoder on a CPU (``to_cpu_bf16``; applied by
``random_decoder`` and the torch engines whenever a decoder is bf16 on the CPU):

- weights and activations in bf16, every 4-D weight in channels-last (oneDNN's blocked bf16
  convolutions, AMX or avx512_bf16, read NHWC without reorders);
- GroupNorm keeps its bf16 module: PyTorch's CPU GroupNorm kernel on bf16 input accumulates
  mean and variance in fp32 already (an explicit fp32 GroupNorm, cast in and out, gave the
  same PSNR and cost a cast per norm);
- the final ``conv_out`` (192 -> 3 channels, negligible work) runs in fp32 on the upcast
  activations, so the image itself is not rounded to bf16's 8-bit mantissa and comes out fp32.

Measured side by side on the x1.5 decoder at 256x256 with image and mask, batch 1, 2 threads,
interleaved, on this project's 2-core Xeon (AMX and avx512_bf16), load average 12-19 from other
work, so only the ordering is meaningful: fp32 25-167 s, fp32 channels-last 41-123 s, autocast
bf16 (fp32 weights) 41-101 s, autocast bf16 channels-last 20.5-54 s, bf16 weights channels-last
20.0-50 s (PSNR 46.3 dB against fp32), the same with fp32 GroupNorm 21.1-61 s (46.3 dB); autocast
gave 46.9-47.0 dB. A second run of the three bf16
candidates (load average 7-5.6, 3 runs each): autocast channels-last 8.3 / 15.9 / 11.7 s, bf16 weights
channels-last 6.0 / 12.0 / 13.2 s, with fp32 GroupNorm 10.3 / 14.2 / 11.4 s: tied within the noise
of a shared machine. On the quiet machine (load average 1.4-1.7, 6 interleaved runs after a warm-up):
bf16 weights channels-last min 1.85 s, median 2.48 s (46.9 dB); autocast channels-last min 2.15 s,
median 3.08 s (47.6 dB). We keep bf16 weights: faster, half the weight memory, no per-call weight
casts (bench/decoder_cpu.py on the quiet machine: 4.19x diffusers eager fp32, 46.9 dB).
"""
from __future__ import annotations

import torch
from torch import nn


class Fp32OutConv(nn.Conv2d):
    """A Conv2d that computes in its weights' dtype (fp32 here) and returns that dtype."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.to(self.weight.dtype))


def is_cpu_bf16(decoder: nn.Module) -> bool:
    p = next(decoder.parameters(), None)
    return p is not None and p.device.type == "cpu" and p.dtype == torch.bfloat16


def to_cpu_bf16(decoder: nn.Module) -> nn.Module:
    """``decoder`` (an ``AsymmetricDecoder``, any dtype, on the CPU) prepared for bf16 decoding, in place.

    Idempotent. The state dict keeps its names and shapes (conv_out's tensors are fp32).
    """
    decoder.to(dtype=torch.bfloat16, memory_format=torch.channels_last)
    out = decoder.conv_out
    if type(out) is nn.Conv2d:
        out.__class__ = Fp32OutConv  # same fields and state dict: only forward changes
    out.float()
    return decoder.eval()
