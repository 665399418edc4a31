"""Triton kernels: fused (partial) convolution with mask-guided blending, GroupNorm+SiLU."""
