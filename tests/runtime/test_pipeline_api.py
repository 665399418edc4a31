"""InpaintPipeline's contract: pluggable engines, output types, clear errors on bad calls."""
from __future__ import annotations

import numpy as np
import PIL.Image
import pytest
import torch
from runtime_helpers import image_and_mask

from asymvq.engines import COMPONENT_IO
from asymvq.pipeline import InpaintPipeline
from asymvq.pipeline.stages import PipelineSpec


class RecordingEngine:
    """A foreign backend: any object with the Engine attributes. Records the feeds it gets."""

    backend = "recording"

    def __init__(self, inner):
        self.inner, self.component = inner, inner.component
        self.input_names, self.output_names = COMPONENT_IO[self.component]
        self.calls: list[dict] = []

    def __call__(self, **feeds):
        self.calls.append({k: (tuple(v.shape), v.dtype) for k, v in feeds.items()})
        return {self.output_names[0]: self.inner(**feeds)[self.inner.output_names[0]].clone()}


def _call(pipe, **kw):
    image, mask = image_and_mask(seed=9)
    args = dict(prompt="a cat", image=image, mask_image=mask, num_inference_steps=2,
                generator=torch.Generator().manual_seed(1), output_type="pt")
    args.update(kw)
    return pipe(**args)


def test_engines_plug_in_without_changing_the_result(tiny_pipe):
    wrapped = {name: RecordingEngine(e) for name, e in tiny_pipe.stages.engines.items()}
    other = InpaintPipeline(wrapped, scheduler=tiny_pipe.scheduler, spec=tiny_pipe.spec, tokenizer=tiny_pipe.tokenizer)
    a = _call(tiny_pipe).images
    b = _call(other).images
    torch.testing.assert_close(a, b, atol=0, rtol=0)
    # What each engine format must accept: fixed names, CFG batch 2 for the UNet, float32 (B,) timesteps.
    unet_calls = wrapped["unet"].calls
    assert len(unet_calls) == 2
    assert unet_calls[0] == {"sample": ((2, 9, 8, 8), torch.float32), "timestep": ((2,), torch.float32),
                             "encoder_hidden_states": ((2, 77, 32), torch.float32)}
    assert wrapped["decoder"].calls == [{"latent": ((1, 4, 8, 8), torch.float32), "image": ((1, 3, 64, 64), torch.float32),
                                         "mask": ((1, 1, 64, 64), torch.float32)}]
    assert len(wrapped["vae-encoder"].calls) == 1  # the masked image only: no wasted encode of the source
    assert len(wrapped["text-encoder"].calls) == 2 and wrapped["decoder-plain"].calls == []


def test_output_types(tiny_pipe):
    pil = _call(tiny_pipe, output_type="pil").images
    arr = _call(tiny_pipe, output_type="np").images
    pt = _call(tiny_pipe, output_type="pt").images
    lat = _call(tiny_pipe, output_type="latent")
    assert isinstance(pil[0], PIL.Image.Image) and pil[0].size == (64, 64)
    np.testing.assert_allclose(arr, pt.permute(0, 2, 3, 1).numpy(), atol=1e-6)
    assert lat.images.shape == (1, 4, 8, 8) and torch.equal(lat.images, lat.latents)


def test_same_seed_same_image_other_seed_other_image(tiny_pipe):
    a = _call(tiny_pipe).images
    b = _call(tiny_pipe).images
    c = _call(tiny_pipe, generator=torch.Generator().manual_seed(2)).images
    torch.testing.assert_close(a, b, atol=0, rtol=0)
    assert (a - c).abs().max() > 1e-3


def test_preset_text_to_image_and_every_scheduler(tiny_text2img_pipe):
    pipe = tiny_text2img_pipe
    for name in ("ddim", "pndm", "euler", "dpm++"):
        out = pipe.set_scheduler(name)("a cat", num_inference_steps=2, height=32, width=48, output_type="pt").images
        assert out.shape == (1, 3, 32, 48) and bool(torch.isfinite(out).all())


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(prompt=None), "^prompt / prompt_embeds: pass exactly one"),
        (dict(prompt_embeds=torch.zeros(1, 77, 32)), "^prompt / prompt_embeds: pass exactly one"),
        (dict(prompt=3), "^prompt: expected a string"),
        (dict(negative_prompt=["a", "b"]), "^negative_prompt: expected a string or a list of 1"),
        (dict(num_inference_steps=0), "^num_inference_steps: expected a positive integer"),
        (dict(strength=0.0), r"^strength: expected a value in \(0, 1\]"),
        (dict(strength=0.1, num_inference_steps=4), r"^strength: expected a value that leaves at least one of the 4 denoising steps"),
        (dict(image=None, mask_image=None), "^image / mask_image: required"),
        (dict(mask_image=None), "^mask_image: expected an image"),
        (dict(height=60), "^height: expected a positive multiple of 8"),
        (dict(num_images_per_prompt=0), "^num_images_per_prompt: expected a positive integer"),
        (dict(output_type="jpg"), "^output_type: expected one of"),
    ],
)
def test_bad_calls_raise_clear_value_errors(tiny_pipe, kwargs, message):
    with pytest.raises(ValueError, match=message):
        _call(tiny_pipe, **kwargs)


def test_construction_errors(tiny_pipe, tiny_text2img_pipe):
    engines = tiny_pipe.stages.engines
    spec, sched = tiny_pipe.spec, tiny_pipe.scheduler
    with pytest.raises(ValueError, match="'unet' engine is required"):
        InpaintPipeline({k: v for k, v in engines.items() if k != "unet"}, scheduler=sched, spec=spec)
    with pytest.raises(ValueError, match="needs a 'vae-encoder' engine"):
        InpaintPipeline({k: v for k, v in engines.items() if k != "vae-encoder"}, scheduler=sched, spec=spec)
    with pytest.raises(ValueError, match=r"engines\['decoder'\]: expected an asymvq Engine"):
        InpaintPipeline({**engines, "decoder": engines["unet"]}, scheduler=sched, spec=spec)
    with pytest.raises(ValueError, match="unknown components"):
        InpaintPipeline({**engines, "vae": engines["unet"]}, scheduler=sched, spec=spec)
    with pytest.raises(ValueError, match="^scheduler must be one of"):
        InpaintPipeline(engines, scheduler=sched, spec=spec).set_scheduler("lms")
    with pytest.raises(ValueError, match="unet_in_channels must be 9"):
        PipelineSpec(unet_in_channels=8)
    no_text = InpaintPipeline({k: v for k, v in engines.items() if k != "text-encoder"}, scheduler=sched, spec=spec)
    with pytest.raises(ValueError, match="^prompt: this pipeline has no tokenizer/text encoder"):
        _call(no_text)
    with pytest.raises(ValueError, match="^image / mask_image: this pipeline's UNet has 4 input channels"):
        _call(tiny_text2img_pipe)
