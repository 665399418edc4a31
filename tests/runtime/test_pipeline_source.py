"""PipelineSource: the one value the CLI, the HTTP server and Ray hold, and the one place its rules live."""
from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch

from asymvq.pipeline import InpaintPipeline, PipelineSource


@pytest.mark.parametrize("options, needle", [
    (dict(preset="tiny", model="sd"), "--preset: give either --preset or --model/--engines (with --decoder), not both"),
    (dict(preset="tiny", decoder="d.pt"), "--preset: give either --preset"),
    (dict(preset="big"), "preset must be one of ['tiny', 'sd15', 'tiny-flux-fill', 'flux-fill', 'tiny-sdxl', 'sdxl'], got 'big'"),
    (dict(preset="tiny-flux-fill", decoder="nowhere.pt"), "--decoder: expected a decoder checkpoint or a decoder preset"),
    (dict(preset="tiny-flux-fill", scheduler="ddim"), "--scheduler: FLUX.1 Fill runs its own flow-matching scheduler only"),
    (dict(preset="tiny-sdxl", kernels="triton"), "--kernels: the sdxl pipelines run the torch decoder kernels only"),
    (dict(), "--model / --engines: give exactly one"),
    (dict(model="sd", engines="eng"), "--model / --engines: give exactly one"),
    (dict(engines="eng", decoder="d.pt"), "--decoder: an engines directory brings its own decoder"),
    (dict(engines="eng", kernels="triton"), "--kernels: chooses the torch decoder's kernels"),
    (dict(model="sd", backend="onnxruntime"), "--backend / --precision: they choose how an engines directory runs"),
    (dict(preset="tiny", precision="bf16"), "--backend / --precision: they choose how an engines directory runs"),
    (dict(engines="eng", backend="onnx"), "--backend: expected one of ["),
    (dict(engines="eng", precision="bf16"), "--precision: chooses OpenVINO's inference precision"),
    (dict(engines="eng", backend="openvino", precision="fp16"), "--precision: expected fp32 or bf16, got 'fp16'"),
    (dict(engines="eng", threads=0), "--threads: expected a positive integer, got 0"),
    (dict(engines="eng", threads=True), "--threads: expected a positive integer, got True"),
])
def test_the_rules_refuse_a_bad_combination_on_construction(options, needle):
    with pytest.raises(ValueError) as exc:
        PipelineSource(**options)
    assert needle in str(exc.value), str(exc.value)


def test_serving_defaults_to_the_tiny_preset_and_labels_the_source():
    assert PipelineSource.serving() == PipelineSource(preset="tiny")
    assert PipelineSource.serving(model=Path("sd"), decoder=Path("d.pt")).preset is None
    assert PipelineSource.serving().label == "preset:tiny"
    assert PipelineSource(model=Path("/m/sd")).label == "/m/sd"
    assert PipelineSource(engines="eng").label == "eng"


def test_plain_values_that_pickle_to_a_replica():
    src = PipelineSource(model=Path("sd"), decoder=Path("d.pt"), device="cpu")
    assert (src.model, src.decoder) == ("sd", "d.pt")  # Paths from a command line become strings
    assert pickle.loads(pickle.dumps(src)) == src


def test_engine_options_pass_threads_only_to_the_backends_that_take_them():
    assert PipelineSource(engines="e").engine_options() == {"backend": None}
    assert PipelineSource(engines="e", backend="openvino", precision="bf16", threads=2).engine_options() == \
        {"backend": "openvino", "precision": "bf16", "threads": 2}
    assert PipelineSource(engines="e", backend="torch", threads=2).engine_options() == {"backend": "torch"}


def test_build_gives_the_pipeline_the_constructor_gives():
    built = PipelineSource(preset="tiny", scheduler="euler").build()
    direct = InpaintPipeline.from_preset("tiny", scheduler="euler", dtype="auto")  # the source's default
    assert type(built.scheduler) is type(direct.scheduler)
    image, mask = torch.rand(1, 3, 32, 32), (torch.rand(1, 1, 32, 32) > 0.5).float()
    run = lambda p: p("a cat", image, mask, num_inference_steps=2, generator=torch.Generator().manual_seed(3),  # noqa: E731
                      output_type="pt").images
    assert torch.equal(run(built), run(direct))


@pytest.mark.parametrize("value", [0, -1, True, 2.0, "3", None])
def test_one_integer_check_refuses_bools_everywhere(value, tiny_pipe):
    """The server's limits, Ray's config, the profile config and the pipeline's steps share check_int."""
    from asymvq.pipeline.checks import check_int
    from asymvq.profiling.profiler import ProfileConfig

    with pytest.raises(ValueError, match=r"^x: expected a positive integer, got "):
        check_int(value, "x")
    with pytest.raises(ValueError, match=r"^steps: expected an integer >= 1, got "):
        ProfileConfig(steps=value)
    with pytest.raises(ValueError, match=r"^num_inference_steps: expected a positive integer, got "):
        tiny_pipe.denoise("a", torch.rand(1, 3, 32, 32), torch.ones(1, 1, 32, 32), num_inference_steps=value)
    assert check_int(3, "x") == 3 and check_int(0, "x", minimum=0) == 0
