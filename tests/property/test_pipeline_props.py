"""Property: ``InpaintPipeline.__call__`` on the tiny preset either returns finite images of the
asked size (and the same images for equal arguments given in another accepted form) or raises
ValueError naming the bad argument."""
from __future__ import annotations

import re
import warnings

import numpy as np
import PIL.Image
import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st
from props_settings import examples

from asymvq import InpaintPipeline


@pytest.fixture(scope="module")
def pipe():
    return InpaintPipeline.from_preset("tiny")


def _images(w=16, h=16, seed=0):
    rng = np.random.RandomState(seed)
    image = PIL.Image.fromarray(rng.randint(0, 256, (h, w, 3)).astype(np.uint8))
    mask = PIL.Image.fromarray((rng.rand(h, w) > 0.5).astype(np.uint8) * 255)
    return image, mask


def _call(pipe, **kw):
    image, mask = _images()
    args = dict(prompt="a cat", image=image, mask_image=mask, num_inference_steps=1, output_type="pt")
    args.update(kw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pipe(args.pop("prompt"), args.pop("image"), args.pop("mask_image"), **args)


NAN = float("nan")
# kind -> (argument named in the error, keyword arguments of the call)
BAD = {
    "guidance-nan": ("guidance_scale", dict(guidance_scale=NAN)),
    "guidance-negative": ("guidance_scale", dict(guidance_scale=-1.0)),
    "guidance-inf": ("guidance_scale", dict(guidance_scale=float("inf"))),
    "guidance-string": ("guidance_scale", dict(guidance_scale="7.5")),
    "guidance-none": ("guidance_scale", dict(guidance_scale=None)),
    "guidance-empty-list": ("guidance_scale", dict(guidance_scale=[])),
    "guidance-list-nan": ("guidance_scale", dict(guidance_scale=[NAN])),
    "guidance-list-mixed-on-off": ("guidance_scale", dict(prompt=["a", "b"], guidance_scale=[7.5, 1.0])),
    "guidance-list-wrong-length": ("guidance_scale", dict(prompt=["a", "b"], guidance_scale=[7.5, 7.5, 7.5])),
    "eta-negative": ("eta", dict(eta=-0.1)),
    "eta-above-1": ("eta", dict(eta=1.5)),
    "eta-nan": ("eta", dict(eta=NAN)),
    "eta-string": ("eta", dict(eta="0")),
    "strength-0": ("strength", dict(strength=0.0)),
    "strength-above-1": ("strength", dict(strength=1.5)),
    "strength-nan": ("strength", dict(strength=NAN)),
    "strength-string": ("strength", dict(strength="0.5")),
    "strength-none": ("strength", dict(strength=None)),
    "steps-0": ("num_inference_steps", dict(num_inference_steps=0)),
    "steps-bool": ("num_inference_steps", dict(num_inference_steps=True)),
    "steps-float": ("num_inference_steps", dict(num_inference_steps=1.5)),
    "images-per-prompt-0": ("num_images_per_prompt", dict(num_images_per_prompt=0)),
    "images-per-prompt-float": ("num_images_per_prompt", dict(num_images_per_prompt=2.0)),
    "height-12": ("height", dict(height=12)),
    "height-0": ("height", dict(height=0)),
    "height-string": ("height", dict(height="16")),
    "width-negative": ("width", dict(width=-16)),
    "width-float": ("width", dict(width=16.0)),
    "generator-list-too-short": ("generator", dict(num_images_per_prompt=2, generator=[torch.Generator()])),
    "generator-list-too-long": ("generator", dict(generator=[torch.Generator(), torch.Generator()])),
    "generator-list-of-ints": ("generator", dict(generator=[0])),
    "generator-int-seed": ("generator", dict(generator=42)),
    "prompt-embeds-2d": ("prompt_embeds", dict(prompt=None, prompt_embeds=torch.zeros(77, 32))),
    "prompt-embeds-int": ("prompt_embeds", dict(prompt=None, prompt_embeds=torch.zeros(1, 77, 32, dtype=torch.int64))),
    "prompt-embeds-nan": ("prompt_embeds", dict(prompt=None, prompt_embeds=torch.full((1, 77, 32), NAN))),
    "prompt-embeds-empty": ("prompt_embeds", dict(prompt=None, prompt_embeds=torch.zeros(0, 77, 32))),
    "prompt-embeds-wrong-width": ("prompt_embeds", dict(prompt=None, prompt_embeds=torch.zeros(1, 77, 7))),
    "prompt-and-embeds": ("prompt", dict(prompt_embeds=torch.zeros(1, 77, 32))),
    "prompt-none": ("prompt", dict(prompt=None)),
    "prompt-int": ("prompt", dict(prompt=123)),
    "prompt-empty-list": ("prompt", dict(prompt=[])),
    "negative-prompt-wrong-length": ("negative_prompt", dict(negative_prompt=["x", "y"])),
    "negative-prompt-not-str": ("negative_prompt", dict(negative_prompt=[None])),
    "negative-embeds-shape": ("negative_prompt_embeds", dict(prompt=None, prompt_embeds=torch.zeros(1, 77, 32),
                                                             negative_prompt_embeds=torch.zeros(2, 77, 32))),
    "image-missing": ("image", dict(image=None)),
    "mask-missing": ("mask_image", dict(mask_image=None)),
    "image-string": ("image", dict(image="in.png")),
    "image-int-tensor": ("image", dict(image=torch.zeros(1, 3, 16, 16, dtype=torch.int32))),
    "mask-other-size": ("mask_image", dict(mask_image=PIL.Image.new("L", (24, 16)))),
    "mask-batch-3": ("mask_image", dict(mask_image=[PIL.Image.new("L", (16, 16))] * 3)),
    "output-type": ("output_type", dict(output_type="png")),
    "scheduler-name": ("scheduler", dict(scheduler="lms")),
}


@pytest.mark.parametrize("kind", sorted(BAD))
def test_bad_arguments_raise_valueerror_naming_them(pipe, kind):
    arg, kw = BAD[kind]
    kw = dict(kw)
    with pytest.raises(ValueError, match=rf"(^|\W){re.escape(arg)}\W"):
        _call(pipe, **kw)


@examples(6)
@given(steps=st.integers(1, 2), guidance=st.sampled_from([0.0, 1.0, 3, 7.5]), eta=st.sampled_from([0.0, 0.5, 1.0]),
       strength=st.sampled_from([1.0, 0.75, 0.5]), per_prompt=st.integers(1, 2), size=st.sampled_from([(16, 16), (24, 16)]),
       gen=st.sampled_from(["none", "one", "list"]), seed=st.integers(0, 100))
def test_valid_calls_give_finite_images_and_numpy_scalars_equal_floats(pipe, steps, guidance, eta, strength, per_prompt,
                                                                       size, gen, seed):
    # int(steps * strength) == 0 leaves no step: a documented ValueError (test_bad_arguments), not a valid call
    assume(int(steps * strength) >= 1)
    image, mask = _images(*size, seed=seed)

    def gens():
        return {"none": None, "one": torch.Generator().manual_seed(seed),
                "list": [torch.Generator().manual_seed(seed + i) for i in range(per_prompt)]}[gen]

    common = dict(image=image, mask_image=mask, num_inference_steps=steps, strength=strength,
                  num_images_per_prompt=per_prompt)
    out = _call(pipe, guidance_scale=guidance, eta=eta, generator=gens(), **common).images
    assert out.shape == (per_prompt, 3, size[1], size[0]) and bool(torch.isfinite(out).all())
    assert 0 <= float(out.min()) and float(out.max()) <= 1
    if gen != "none":  # the same call with numpy scalars: the same images
        again = _call(pipe, guidance_scale=np.float64(guidance), eta=np.float32(eta), generator=gens(), **common).images
        assert torch.equal(out, again)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="a generator on another device needs CUDA")
def test_generator_on_another_device_is_named(pipe):
    with pytest.raises(ValueError, match="^generator: expected a generator on the CPU or on the pipeline's device"):
        _call(pipe, generator=torch.Generator(device="cuda"))


BAD_KINDS = sorted(BAD)
