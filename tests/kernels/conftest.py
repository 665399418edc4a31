"""Kernel tests run on the GPU when there is one, else on Triton's CPU interpreter.

Triton picks compiler or interpreter when a kernel is *defined*, so TRITON_INTERPRET must be
set before anything imports asymvq.kernels. pytest imports conftest files while collecting,
before any test module of this folder and before any test runs, in every xdist worker (each
collects the whole suite); test modules elsewhere do not import the kernels at import time.
"""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
