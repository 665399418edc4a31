"""The checks of an SDXL or FLUX.1 Fill engines directory, run by test_family_engines_sdxl.py and
test_family_engines_flux.py on the directory each exports (one file per family, so that ``--dist loadfile``
puts the two exports on two workers): every component of the tiny preset exported once to ONNX and OpenVINO
(the module fixture is each file's cost: about 60 s for SDXL and 100 s for FLUX on 2 loaded cores; both
backends come from one export, the IR converted from the ONNX), the manifest naming the family and its latent
space, and ``InpaintPipeline.from_engines`` giving the torch pipeline's image (``from_preset``, built through
diffusers' pipeline) on both backends."""
import json
import shutil

import pytest
import torch

from asymvq.engines import load_engine_dir
from asymvq.engines.contract import capabilities
from asymvq.export import DEFAULT_SHAPES, ManifestError, Source, export_directory
from asymvq.models.components import DECODER, DENOISERS, FAMILY_COMPONENTS, FLUX_FILL, SDXL
from asymvq.models.family_networks import family_vae, flux_text_len
from asymvq.models.latent_space import LatentSpace
from asymvq.pipeline import InpaintPipeline

PRESETS = {"tiny-flux-fill": FLUX_FILL, "tiny-sdxl": SDXL}
ATOL = 1e-3  # an image after 2 steps of fp32 engines against torch eager, as the SD directory's test


def export_family_dir(preset, tmp_path_factory):
    """(preset, the engines directory of every component of ``preset``, ONNX and OpenVINO)."""
    out = tmp_path_factory.mktemp(preset)
    export_directory(out, "all", Source(preset=preset), shapes=DEFAULT_SHAPES["tiny"], formats=("onnx", "openvino"))
    return preset, out


def _call(preset):
    """A batch of 2 (two images per prompt) at a non-square size, 2 steps; a prompt within the tiny T5's 8 tokens."""
    g = torch.Generator().manual_seed(3)
    image = torch.rand(1, 3, 32, 48, generator=g)
    mask = torch.zeros(1, 1, 32, 48)
    mask[..., 8:24, 16:40] = 1
    kwargs = dict(prompt="a cat", image=image, mask_image=mask, num_inference_steps=2, num_images_per_prompt=2,
                  output_type="pt")
    if PRESETS[preset] == FLUX_FILL:
        kwargs["max_sequence_length"] = flux_text_len(preset)  # the T5 length the engine was exported for
    return kwargs


def test_manifest_names_the_family_and_its_latent_space(family_dir):
    preset, out = family_dir
    family = PRESETS[preset]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["family"] == family
    assert manifest["latent_space"] == LatentSpace.from_vae_config(dict(family_vae(preset).config)).to_dict()
    # "all" of a plain decoder (the family VAE's own) holds no conditioned entry
    assert set(manifest["components"]) == set(FAMILY_COMPONENTS[family]) - {DECODER}
    assert {"tokenizer", "tokenizer_2", "scheduler"} <= set(manifest)
    denoiser = load_engine_dir(out, components=[DENOISERS[family]])[DENOISERS[family]]
    dims = capabilities(denoiser).static_dims
    if family == SDXL:
        assert (dims["latent_channels"], dims["text_dim"], dims["pooled_dim"], dims["time_ids_dim"]) == (4, 64, 32, 6)
        assert manifest["latent_space"]["scaling_factor"] == 0.13025
    else:
        assert (dims["latent_channels"], dims["text_len"], dims["pooled_dim"]) == (16, flux_text_len(preset), 32)


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_pipeline_from_engines_gives_the_torch_image(family_dir, backend):
    # 5-13 s at load 13 with OpenVINO: it compiles each of the five IRs on load; the run itself is 2 tiny steps
    preset, out = family_dir
    options = {"precision": "fp32"} if backend == "openvino" else {}  # not the CPU's bf16 default
    engines = InpaintPipeline.from_engines(out, backend=backend, **options)
    torch_pipe = InpaintPipeline.from_preset(preset)
    assert type(engines) is type(torch_pipe)
    assert {e.backend for e in engines.stages.engines.values()} == {backend}
    kwargs = _call(preset)
    got = engines(**kwargs, generator=torch.Generator().manual_seed(0)).images
    ref = torch_pipe(**kwargs, generator=torch.Generator().manual_seed(0)).images
    assert got.shape == (2, 3, 32, 48) and torch.isfinite(got).all()
    assert (got - got[:1]).abs().max() > 1e-3  # two different draws: the batch is not one image twice
    torch.testing.assert_close(got, ref, atol=ATOL, rtol=0)


def test_bad_input_to_the_engines_gets_the_argument_named(family_dir):
    preset, out = family_dir
    pipe = InpaintPipeline.from_engines(out, backend="onnxruntime")
    kwargs = _call(preset)
    if PRESETS[preset] == FLUX_FILL:
        with pytest.raises(ValueError, match="max_sequence_length: the T5 engine was exported for 8 tokens"):
            pipe(**{**kwargs, "max_sequence_length": 16})
        with pytest.raises(ValueError, match="scheduler: FLUX.1 Fill runs its flow-matching scheduler only"):
            InpaintPipeline.from_engines(out, scheduler="ddim")
    else:
        with pytest.raises(ValueError, match="height: expected a positive multiple of 8"):
            pipe(**{**kwargs, "height": 36})


def test_a_directory_holding_another_familys_components_is_refused(family_dir, tmp_path):
    preset, out = family_dir
    dst = tmp_path / "copy"
    shutil.copytree(out, dst)
    manifest = json.loads((dst / "manifest.json").read_text())
    manifest["family"] = "sd"
    (dst / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ManifestError, match=f"is a sd directory but holds .*{DENOISERS[PRESETS[preset]]}"):
        InpaintPipeline.from_engines(dst)


def test_the_cli_and_the_servers_source_read_the_family_from_the_directory(family_dir, tmp_path):
    """`asymvq inpaint --engines DIR` / `asymvq serve --engines DIR` check a job by the directory's family before
    any engine loads, and build the family's pipeline."""
    import PIL.Image

    from asymvq.cli.app import app
    from asymvq.pipeline.source import PipelineSource

    preset, out = family_dir
    source = PipelineSource(engines=str(out))
    assert source.family == PRESETS[preset]
    assert source.build().rules.name == PRESETS[preset]
    odd = 40 if PRESETS[preset] == FLUX_FILL else 36  # not a multiple of the family's 16 / 8
    PIL.Image.new("RGB", (odd, odd)).save(tmp_path / "i.png")
    PIL.Image.new("L", (odd, odd)).save(tmp_path / "m.png")
    from typer.testing import CliRunner

    r = CliRunner().invoke(app, ["inpaint", "--engines", str(out), "--image", str(tmp_path / "i.png"),
                                 "--mask", str(tmp_path / "m.png"), "--prompt", "x", "--out", str(tmp_path / "o.png")])
    text = r.output + str(r.exception or "")
    assert r.exit_code != 0 and f"multiples of {16 if PRESETS[preset] == FLUX_FILL else 8}" in text, (r.exit_code, text)
