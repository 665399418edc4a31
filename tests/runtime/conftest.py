"""Fixtures of the runtime tests, built once per xdist worker."""
from __future__ import annotations

import pytest
import torch

from runtime_helpers import diffusers_pipeline


@pytest.fixture(autouse=True)
def _one_thread_per_worker():
    """CI runs two xdist workers on two cores: a second intra-op thread each only oversubscribes them."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def ref_inpaint():
    return diffusers_pipeline("inpaint")


@pytest.fixture(scope="session")
def tiny_pipe():
    from asymvq.pipeline import InpaintPipeline

    return InpaintPipeline.from_preset("tiny")


@pytest.fixture(scope="session")
def tiny_text2img_pipe():
    from asymvq.pipeline import InpaintPipeline

    return InpaintPipeline.from_preset("tiny", in_channels=4)
