"""A batch of independent jobs (one generator per image) gives each image what it gets alone (Ray Serve batches this way)."""
from __future__ import annotations

import numpy as np
import PIL.Image
import pytest
import torch

from asymvq.pipeline.images import postprocess
from asymvq.serve.batching import batch_key, decode_jobs, decode_key, denoise_jobs, finish_job


def _job(seed: int, size: int = 32, **kw):
    rng = np.random.default_rng(seed)
    source = PIL.Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))
    hole = np.zeros((size, size), np.uint8)
    hole[seed % 8: size // 2 + seed % 8, 4: size - 4] = 255
    job = dict(source=source, hole=PIL.Image.fromarray(hole), prompt=f"prompt {seed}", negative_prompt=None,
               steps=2, guidance=7.5, seed=seed, strength=1.0, scheduler=None)
    job.update(kw)
    return job


def _alone(pipe, job):
    return pipe(job["prompt"], job["source"], job["hole"], negative_prompt=job["negative_prompt"],
                num_inference_steps=job["steps"], guidance_scale=job["guidance"], strength=job["strength"],
                generator=torch.Generator().manual_seed(job["seed"]), scheduler=job["scheduler"], output_type="pt").images


@pytest.mark.parametrize("scheduler,strength", [(None, 1.0), ("euler", 1.0), ("dpm++", 0.75), ("pndm", 1.0)])
def test_a_batch_gives_each_job_its_image_alone(tiny_pipe, scheduler, strength):
    jobs = [_job(s, scheduler=scheduler, strength=strength, steps=4) for s in (3, 11, 5)]
    jobs[1]["negative_prompt"] = "blurry"
    jobs[2]["guidance"] = 3.0  # guidance may differ inside a batch; on/off may not
    assert len({batch_key(j) for j in jobs}) == 1
    denoised = denoise_jobs(tiny_pipe, jobs)
    images = decode_jobs(tiny_pipe, denoised)
    for job, got in zip(jobs, images):
        got, want = postprocess(got, "pt"), _alone(tiny_pipe, job)  # decode_jobs gives the decoder's [-1, 1]
        assert got.shape == want.shape == (1, 3, 32, 32)
        assert (got - want).abs().max() <= 1e-4, (got - want).abs().max()
    # and the finished PNG + Pre_error equal asymvq.pipeline.inpaint_run's (what `asymvq inpaint` / serve write)
    from asymvq.pipeline.inpaint_run import run_inpaint

    run = run_inpaint(tiny_pipe, jobs[0]["source"], jobs[0]["hole"], jobs[0]["prompt"], steps=4, strength=strength,
                      seed=3, scheduler=scheduler)
    fin = finish_job(images[0], denoised[0])
    diff = np.abs(np.asarray(fin.images[0], np.int16) - np.asarray(run.images[0], np.int16))
    assert diff.max() <= 1 and fin.pre_error == pytest.approx(run.pre_error, rel=1e-4, abs=1e-4)


def test_single_generator_path_is_unchanged_and_lists_are_checked(tiny_pipe):
    job = _job(7)
    a = _alone(tiny_pipe, job)
    b = tiny_pipe("prompt 7", job["source"], job["hole"], num_inference_steps=2, output_type="pt",
                  generator=[torch.Generator().manual_seed(7)], guidance_scale=[7.5]).images
    assert torch.equal(a, b)  # a list of one is the single path, bit for bit
    with pytest.raises(ValueError, match="generator: expected a torch.Generator or a list of 2"):
        tiny_pipe(["a", "b"], job["source"], job["hole"], num_inference_steps=1, generator=[torch.Generator()])
    with pytest.raises(ValueError, match="guidance_scale: expected all values > 1"):
        tiny_pipe(["a", "b"], job["source"], job["hole"], num_inference_steps=1, guidance_scale=[7.5, 1.0])
    with pytest.raises(ValueError, match="guidance_scale: expected a number or one per prompt"):
        tiny_pipe(["a", "b"], job["source"], job["hole"], num_inference_steps=1, guidance_scale=[7.5])


def test_batch_key_separates_what_cannot_share_a_batch():
    base = batch_key(_job(1))
    assert batch_key(_job(2, prompt="x", negative_prompt="y", guidance=2.0)) == base
    for change in (dict(size=40), dict(steps=3), dict(scheduler="euler"), dict(guidance=1.0), dict(strength=0.5)):
        size = change.pop("size", 32)
        assert batch_key(_job(1, size=size, **change)) != base, change


def test_a_region_decode_batch_is_one_box(tiny_pipe):
    """With a region, items share a decode call only with the same mask box (decode_key), and then each gets the
    region decode it gets alone; items of two boxes in one call are refused (their union box is neither's)."""
    options = {"region": "mask", "margin": 0}
    denoised = denoise_jobs(tiny_pipe, [_job(s) for s in (3, 11, 0)])  # holes at rows 3, 3 and 0: boxes 0:3 and 0:2
    keys = [decode_key(d, options) for d in denoised]
    assert keys[0] == keys[1] != keys[2] and len({decode_key(d) for d in denoised}) == 1  # without a region: the shape
    with pytest.raises(ValueError, match="one decode_key"):
        decode_jobs(tiny_pipe, denoised, decode_options=options)
    for d, got in zip(denoised, decode_jobs(tiny_pipe, denoised[:2], decode_options=options)):
        assert (got - tiny_pipe.decode(d, decode_options=options)).abs().max() <= 1e-4
