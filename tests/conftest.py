"""Suite-wide set-up.

Triton chooses compiler or CPU interpreter when a kernel is *defined*, so TRITON_INTERPRET
must be set before anything imports asymvq.kernels. The top-level conftest is imported
before any test module, in every xdist worker, whatever subset of tests runs.
"""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # after TRITON_INTERPRET is set


@pytest.fixture
def one_torch_thread():
    """torch at one intra-op thread for the test, restored after.

    CI runs two xdist workers on two cores: a second intra-op thread each only oversubscribes them.
    The runtime and property suites use it for every test (their conftests).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
