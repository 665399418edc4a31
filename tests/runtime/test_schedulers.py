"""Schedulers asymvq copies keep every config value they were given, including values patched after
construction (diffusers' pipelines patch ``steps_offset`` that way), so the copy matches diffusers."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler, PNDMScheduler
from diffusers.configuration_utils import FrozenDict
from runtime_helpers import diffusers_pipeline, image_and_mask

from asymvq.pipeline import InpaintPipeline
from asymvq.pipeline.schedulers import (
    SCHEDULERS,
    copy_scheduler,
    make_scheduler,
    scheduler_config,
    scheduler_name,
    switch_scheduler,
)

CLASSES = {"ddim": DDIMScheduler, "pndm": PNDMScheduler, "euler": EulerDiscreteScheduler,
           "dpm++": DPMSolverMultistepScheduler}
SCHEDULE = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")


def patched(cls):
    """A scheduler built with a few keys, then patched the way diffusers' SD pipelines patch one.
    (PNDM as SD ships it, without PRK warm-up steps: diffusers' inpainting pipeline fails with them.)"""
    s = cls(**SCHEDULE, **({"skip_prk_steps": True} if cls is PNDMScheduler else {}))
    assert "steps_offset" in s.config._use_default_values
    s._internal_dict = FrozenDict({**s.config, "steps_offset": 1})
    return s


@pytest.mark.parametrize("name", SCHEDULERS)
def test_copies_keep_values_patched_after_construction(name):
    original = patched(CLASSES[name])
    original.set_timesteps(4)
    for copy in (copy_scheduler(original), switch_scheduler(name, original)):
        assert type(copy) is type(original) and copy.config.steps_offset == 1
        copy.set_timesteps(4)
        torch.testing.assert_close(copy.timesteps, original.timesteps, rtol=0, atol=0)
    # the naive copy is what this guards against: diffusers' from_config drops the patched key
    naive = type(original).from_config(original.config)
    assert naive.config.steps_offset == 0


def test_the_ddim_timesteps_diffusers_runs():
    s = copy_scheduler(patched(DDIMScheduler))
    s.set_timesteps(4)
    assert s.timesteps.tolist() == [751, 501, 251, 1]


def test_switching_kind_keeps_given_values_and_drops_untouched_defaults():
    cfg = scheduler_config(patched(DDIMScheduler).config, DDIMScheduler)
    assert cfg["steps_offset"] == 1 and cfg["beta_schedule"] == "scaled_linear"
    assert "timestep_spacing" not in cfg  # DDIM's default, never given: Euler keeps its own default
    assert switch_scheduler("euler", patched(DDIMScheduler)).config.timestep_spacing == "linspace"
    # a bare config of unknown origin keeps every value it holds
    assert scheduler_config(patched(DDIMScheduler).config)["timestep_spacing"] == "leading"
    assert make_scheduler("ddim", {"steps_offset": 1, **SCHEDULE}).config.steps_offset == 1
    assert scheduler_name("DPM-Solver++") == "dpm++"
    with pytest.raises(ValueError, match=r"^scheduler must be one of \['ddim', 'pndm', 'euler', 'dpm\+\+'\], got 'lms'"):
        scheduler_name("lms")


@pytest.mark.parametrize("name", SCHEDULERS)
def test_pipeline_with_a_patched_scheduler_matches_diffusers(name):
    ref = diffusers_pipeline("inpaint")
    ref.scheduler = patched(CLASSES[name])
    ours = InpaintPipeline.from_diffusers(ref)
    image, mask = image_and_mask(seed=4)
    kwargs = dict(prompt="a red cat", image=image, mask_image=mask, num_inference_steps=3, output_type="np")
    a = ref(**kwargs, generator=torch.Generator().manual_seed(7)).images
    b = ours(**kwargs, generator=torch.Generator().manual_seed(7)).images
    np.testing.assert_allclose(b, a, atol=1e-4, rtol=0)
