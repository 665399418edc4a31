"""Fixtures of the runtime tests, built once per xdist worker."""
from __future__ import annotations

import pytest
from runtime_helpers import diffusers_pipeline


@pytest.fixture(autouse=True)
def _one_thread_per_worker(one_torch_thread):
    """Every runtime test at one torch thread (tests/conftest.py says why)."""


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


@pytest.fixture(scope="session")
def family_pipes():
    """The tiny SDXL and FLUX.1 Fill presets, built once (the references of the families' front-end tests)."""
    from asymvq.pipeline.source import PipelineSource

    return {p: PipelineSource(preset=p).build() for p in ("tiny-sdxl", "tiny-flux-fill")}
