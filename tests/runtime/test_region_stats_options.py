"""``region_stats`` as a decode option wherever a region decode is asked for (asymvq.pipeline.decode_modes, the
engines' capabilities, the CLI's --region-stats), on the tiny preset.

The torch decoder engine runs both statistics and gives what ``decoder(..., region_stats=...)`` gives; an exported
decoder (a crop decoded alone: here a stand-in ``ExportedEngine`` whose graph is the torch decoder's ``decode_core``)
runs "box" only and refuses "lowres" naming the option and the torch backend, in the pipeline, in its own
``decode_with_modes`` and before any job (``modes_engine``). "lowres" without a region is refused naming the
argument, in the CLI's words on the command line; ``asymvq decode --region-stats lowres`` writes the Python call's
image.
"""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from asymvq.engines.contract import DECODER, TensorSpec, capabilities
from asymvq.engines.feeds import ExportedEngine
from asymvq.engines.torch_engine import torch_decoder_engines
from asymvq.models.region import REGION_STATS
from asymvq.models.sources import random_decoder
from asymvq.pipeline.decode_modes import (
    NOTE_REGION,
    as_cli_error,
    check_decode_options,
    cli_decode_options,
    cli_region_options,
    modes_engine,
    run_decoder_with_modes,
)
from asymvq.profiling.timing import StageTimer

try:  # imported here, not in the test: ray's logging set up under a test's captured stderr outlives the capture
    from asymvq.serve import ray_stages
    from asymvq.serve.ray_config import RayServeConfig
except ImportError:  # the ray extra
    ray_stages = None

H, W = 12, 10  # latent pixels
LOWRES = {"region": "mask", "margin": 1, "region_stats": "lowres"}


@pytest.fixture(scope="module")
def dec():
    return random_decoder("tiny")


def inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    lat = torch.randn(1, 4, H, W, generator=g)
    img = torch.rand(1, 3, 8 * H, 8 * W, generator=g) * 2 - 1
    mask = torch.zeros(1, 1, 8 * H, 8 * W)
    mask[..., 30:50, 20:40] = 1
    return lat, img, mask


class CropEngine(ExportedEngine):
    """An exported conditional decoder of any size (as ONNX Runtime runs one), its graph the decoder's ``decode_core``."""

    backend = "onnxruntime"

    def __init__(self, dec):
        def spec(name, channels, dims):
            return TensorSpec(name, "float32", ("batch", channels, *dims), (1, channels, 1, 1), (1, channels, 8, 8),
                              (4, channels, 64, 64))

        super().__init__(DECODER, [spec("latent", 4, ("h", "w")), spec("image", 3, ("8*h", "8*w")),
                                   spec("mask", 1, ("8*h", "8*w"))], [spec("sample", 3, ("8*h", "8*w"))], "cpu")
        self.dec = dec

    def __call__(self, **feeds):
        f = self.conform(feeds, bound=False)
        with torch.inference_mode():
            return {"sample": self.dec.decode_core(*(f[n] for n in self.input_names))}


def test_torch_engines_run_lowres_and_note_it(dec):
    lat, img, mask = inputs()
    engines = torch_decoder_engines(dec)
    assert capabilities(engines[DECODER]).region_stats == REGION_STATS
    timer = StageTimer(torch.device("cpu"))
    got = run_decoder_with_modes(engines, timer, lat, img, mask, dict(LOWRES))
    with torch.inference_mode():
        want = dec(lat, img, mask, region="mask", margin=1, region_stats="lowres")
        box = dec(lat, img, mask, region="mask", margin=1)
    assert torch.equal(got, want) and not torch.equal(got, box)
    choice = timer.notes[NOTE_REGION]
    assert choice.stats == "lowres" and choice.describe().endswith(", lowres statistics)")
    assert choice.to_dict()["region_stats"] == "lowres"
    timer = StageTimer(torch.device("cpu"))  # the default, said as such
    assert torch.equal(run_decoder_with_modes(engines, timer, lat, img, mask, {"region": "mask", "margin": 1}), box)
    assert timer.notes[NOTE_REGION].describe().endswith(", box statistics)")


def test_exported_engines_decode_box_statistics_and_refuse_lowres(dec):
    lat, img, mask = inputs()
    engine = CropEngine(dec)
    assert capabilities(engine).regions and capabilities(engine).region_stats == ("box",)
    box = {"region": "mask", "margin": 1, "region_stats": "box"}
    with torch.inference_mode():
        want = dec(lat, img, mask, region="mask", margin=1)
    torch.testing.assert_close(run_decoder_with_modes({DECODER: engine}, StageTimer(torch.device("cpu")), lat, img,
                                                      mask, box), want, atol=1e-5, rtol=0)
    refused = r"^region_stats: 'lowres' runs on the torch backend only; .*'decoder' engine \(onnxruntime\)"
    with pytest.raises(ValueError, match=refused):
        run_decoder_with_modes({DECODER: engine}, StageTimer(torch.device("cpu")), lat, img, mask, dict(LOWRES))
    with pytest.raises(ValueError, match=refused):  # before any job: what a server and the CLI check first
        modes_engine({DECODER: engine}, dict(LOWRES))
    with pytest.raises(ValueError, match=r"^region_stats: 'lowres' runs on the torch backend only; the onnxruntime "
                                         r"decoder engine"):
        engine.decode_with_modes(dict(LOWRES), latent=lat, image=img, mask=mask)
    assert str(as_cli_error(ValueError("region_stats: 'lowres' runs on the torch backend only"))).startswith(
        "--region-stats: 'lowres' runs on the torch backend only")
    assert modes_engine({DECODER: engine}, box) == DECODER


@pytest.mark.parametrize("options, match", [
    ({"region_stats": "lowres"}, r"^region_stats: only with region='mask' or 'auto', got region_stats='lowres'"),
    ({"region": "mask", "region_stats": "image"}, r"^region_stats: expected one of \('box', 'lowres'\)"),
])
def test_decode_options_take_region_stats_only_with_a_region(dec, options, match):
    assert check_decode_options(options) == options
    lat, img, mask = inputs()
    for engines in (torch_decoder_engines(dec), {DECODER: CropEngine(dec)}):
        with pytest.raises(ValueError, match=match):
            run_decoder_with_modes(engines, StageTimer(torch.device("cpu")), lat, img, mask, options)


def test_cli_options_map_region_stats():
    assert cli_decode_options(None, None, "auto", None, "lowres") == {"region": "auto", "region_stats": "lowres"}
    assert cli_region_options("mask", 2, "box") == {"region": "mask", "margin": 2, "region_stats": "box"}
    assert cli_region_options(None, None) == {} == cli_region_options("full", None)
    for args, match in (((None, None, None, None, "lowres"), r"^--region-stats: only with --decode-region mask or auto"),
                        ((None, None, "full", None, "lowres"), r"^--region-stats: only with --decode-region"),
                        ((None, None, "mask", None, "low"), r"^--region-stats: expected one of \('box', 'lowres'\)"),
                        ((None, None, None, 2, None), r"^--margin: only with --decode-region mask or auto"),
                        ((None, None, "mask", -1, None), r"^--margin: expected an integer >= 0")):
        with pytest.raises(ValueError, match=match):
            cli_decode_options(*args)


def test_cli_decode_region_stats_is_the_python_call(tmp_path, dec):
    from safetensors.torch import save_file
    from typer.testing import CliRunner

    from asymvq.cli import app
    from asymvq.pipeline.images import load_image, postprocess, prepare_image_and_mask

    lat, img, mask = inputs()
    save_file({"latents": lat}, str(tmp_path / "z.safetensors"))
    Image.fromarray(((img[0].permute(1, 2, 0).numpy() + 1) * 127.5).round().astype("uint8")).save(tmp_path / "i.png")
    Image.fromarray((mask[0, 0].numpy() * 255).astype("uint8")).save(tmp_path / "m.png")
    base = ["decode", "--preset", "tiny", "--dtype", "fp32", "--vae-space", "--latents", str(tmp_path / "z.safetensors"),
            "--image", str(tmp_path / "i.png"), "--mask", str(tmp_path / "m.png"), "--decode-region", "mask"]
    runner = CliRunner()
    for stats in ("lowres", "box"):
        ok = runner.invoke(app, base + ["--region-stats", stats, "--out", str(tmp_path / f"{stats}.png")])
        assert ok.exit_code == 0, ok.output
    pixels, hole, _, _ = prepare_image_and_mask(load_image(tmp_path / "i.png"), load_image(tmp_path / "m.png", mode="L"),
                                                None, None)
    with torch.inference_mode():
        want = postprocess(dec(lat, pixels, hole, region="mask", region_stats="lowres"), "pil")[0]
    got = {s: np.asarray(Image.open(tmp_path / f"{s}.png")) for s in ("lowres", "box")}
    assert np.array_equal(got["lowres"], np.asarray(want))
    assert not np.array_equal(got["lowres"], got["box"])  # the flag took effect
    bad = runner.invoke(app, base[:-2] + ["--region-stats", "lowres", "--out", str(tmp_path / "x.png")])
    assert bad.exit_code != 0
    assert "--region-stats: only with --decode-region mask or auto" in str(bad.exception)


def test_a_ray_decode_replica_refuses_lowres_on_an_exported_decoder_at_start(dec, monkeypatch):
    if ray_stages is None:
        pytest.skip("needs the ray extra")

    def stage_pipeline(decoder):
        return lambda cfg, components, threads: SimpleNamespace(stages=SimpleNamespace(decoders=lambda: {DECODER: decoder}))

    cfg = RayServeConfig(decode_region="mask", margin=1, region_stats="lowres")
    monkeypatch.setattr(ray_stages, "_stage_pipeline", stage_pipeline(CropEngine(dec)))
    with pytest.raises(ValueError, match=r"^region_stats: 'lowres' runs on the torch backend only"):
        ray_stages.DecodeStage(cfg)
    monkeypatch.setattr(ray_stages, "_stage_pipeline", stage_pipeline(torch_decoder_engines(dec)[DECODER]))
    monkeypatch.setattr(ray_stages, "_configure_batching", lambda method, cfg: None)  # Serve's, in a deployment only
    monkeypatch.setattr(ray_stages, "node", lambda: "127.0.0.1")
    assert ray_stages.DecodeStage(cfg).decode_options == LOWRES  # the torch decoder runs it
