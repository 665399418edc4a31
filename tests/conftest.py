"""Suite-wide set-up.

Triton chooses compiler or CPU interpreter when a kernel is *defined*, so TRITON_INTERPRET
must be set before anything imports asymvq.kernels. The top-level conftest is imported
before any test module, in every xdist worker, whatever subset of tests runs.
"""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
