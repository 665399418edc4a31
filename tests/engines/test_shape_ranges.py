"""Shape ranges bind only the formats compiled for them (issue 22 item 1).

The tiny decoder exported with the *sd15* default ranges, the ones a user's decoder export gets
(min 8 px, opt 512, max 1024; before: min 256 px, which refused every crop and tile): ONNX Runtime
and OpenVINO (fp32) decode a 48x64 image, an 8x8 latent crop and a 1x1 latent equal to torch, and
sizes outside the recorded range too. The ranges still bind AOTInductor (tests/engines/test_aoti_engine.py)
and TensorRT (its profile, tests/engines/test_tensorrt_engine.py, CUDA only). The same directory decodes
regions (the mask's box through the same engine) equal to the torch region decode, and the pipeline resolves
region="auto" on it."""
import pytest
import torch

from asymvq.engines import load_engine_dir
from asymvq.engines.contract import capabilities
from asymvq.engines.feeds import conform_feeds
from asymvq.export import DEFAULT_SHAPES, Source, TensorSpec, build_module, export_directory, read_manifest

pytest.importorskip("onnxruntime")

ATOL = 1e-4  # fp32 against torch eager
# (batch, height, width) in pixels: the 48x64 image, an 8x8 latent crop, one latent pixel
SIZES = [(1, 48, 64), (2, 64, 64), (1, 8, 8)]


def _formats():
    try:
        import openvino  # noqa: F401
    except ImportError:
        return ["onnx"]
    return ["onnx", "openvino"]


@pytest.fixture(scope="module")
def engine_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("ranges") / "eng"
    export_directory(out, "decoder", Source(preset="tiny"), shapes=DEFAULT_SHAPES["sd15"], formats=_formats())
    return out


@pytest.fixture(scope="module")
def decoder():
    return build_module("decoder", Source(preset="tiny"))


def _feeds(b, hh, ww, seed=0):
    g = torch.Generator().manual_seed(seed)
    return dict(latent=torch.randn(b, 4, hh // 8, ww // 8, generator=g),
                image=torch.rand(b, 3, hh, ww, generator=g) * 2 - 1,
                mask=(torch.rand(b, 1, hh, ww, generator=g) > 0.5).float())


def test_the_default_minimum_is_one_latent_pixel(engine_dir):
    latent = read_manifest(engine_dir)["components"]["decoder"]["inputs"][0]
    assert latent["min"] == [1, 4, 1, 1] and latent["max"] == [4, 4, 128, 128]


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_crops_and_small_images_decode_equal_to_torch(engine_dir, decoder, backend):
    if backend == "openvino" and "openvino" not in _formats():
        pytest.skip("openvino is not installed")
    options = {"precision": "fp32"} if backend == "openvino" else {}
    engine = load_engine_dir(engine_dir, backend=backend, **options)["decoder"]
    for b, hh, ww in SIZES + [(5, 16, 24)]:  # the last: batch 5, above the recorded 1..4
        feeds = _feeds(b, hh, ww)
        with torch.inference_mode():
            ref = decoder(**feeds)
        got = engine(**feeds)["sample"]
        assert got.shape == ref.shape == (b, 3, hh, ww)
        torch.testing.assert_close(got, ref, atol=ATOL, rtol=0, msg=lambda m, b=b, hh=hh, ww=ww: f"{backend} at {b}x{hh}x{ww}: {m}")


def test_a_binding_range_is_still_a_clear_error():
    spec = {"latent": TensorSpec("latent", "float32", ("batch", 4, "h", "w"), (1, 4, 1, 1), (1, 4, 8, 8), (4, 4, 16, 16))}
    big = {"latent": torch.zeros(1, 4, 17, 8)}
    with pytest.raises(ValueError, match=r"latent must have shape .* within \[1, 4, 1, 1\]..\[4, 4, 16, 16\] "
                                         r"\(the ranges it was exported for; re-export with --shapes"):
        conform_feeds("decoder-plain", spec, big, torch.device("cpu"), bound=True)
    assert conform_feeds("decoder-plain", spec, big, torch.device("cpu"), bound=False)["latent"].shape == (1, 4, 17, 8)
    with pytest.raises(ValueError, match=r"\(any positive size where a dim is named\), got \(1, 4, 0, 8\)"):
        conform_feeds("decoder-plain", spec, {"latent": torch.zeros(1, 4, 0, 8)}, torch.device("cpu"), bound=False)
    # a dim exported at one size is static in the graph: it binds every format
    static = {"latent": TensorSpec("latent", "float32", ("batch", 4, "h", "w"), (1, 4, 8, 8), (1, 4, 8, 8), (4, 4, 8, 8))}
    with pytest.raises(ValueError, match=r"latent must have shape \['batch', 4, 8, 8\] \(any positive size"):
        conform_feeds("decoder-plain", static, big, torch.device("cpu"), bound=False)
    assert conform_feeds("decoder-plain", static, {"latent": torch.zeros(7, 4, 8, 8)}, torch.device("cpu"),
                         bound=False)["latent"].shape == (7, 4, 8, 8)


# -- region decoding through the same engines (issue 22 item 1) ------------------------------------
def _holed(b, hh, ww, box, seed=1):
    """Feeds with a hole at ``box`` (image pixels y0, y1, x0, x1): not on the latent grid."""
    feeds = _feeds(b, hh, ww, seed)
    mask = torch.zeros(1, 1, hh, ww)
    y0, y1, x0, x1 = box
    mask[..., y0:y1, x0:x1] = 1
    return {**feeds, "mask": mask}


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_region_decode_equals_the_torch_region_decode(engine_dir, decoder, backend):
    if backend == "openvino" and "openvino" not in _formats():
        pytest.skip("openvino is not installed")
    options = {"precision": "fp32"} if backend == "openvino" else {}
    engine = load_engine_dir(engine_dir, backend=backend, **options)["decoder"]
    caps = engine.capabilities
    assert caps.regions and not caps.tiles and caps.region_sizes is None  # dynamic: any crop
    feeds = _holed(2, 96, 128, (21, 50, 43, 70))
    for margin in (0, 2):
        with torch.inference_mode():
            ref = decoder.decoder(feeds["latent"], feeds["image"], feeds["mask"], region="mask", margin=margin)
        got = engine.decode_with_modes({"region": "mask", "margin": margin}, **feeds)["sample"]
        assert got.shape == ref.shape == (2, 3, 96, 128)
        torch.testing.assert_close(got, ref, atol=ATOL, rtol=0)
        keep = got == feeds["image"].expand_as(got)  # outside the box: the source itself
        assert keep.float().mean() > 0.5
    empty = {**feeds, "mask": torch.zeros(1, 1, 96, 128)}
    assert torch.equal(engine.decode_with_modes({"region": "mask"}, **empty)["sample"], feeds["image"])
    with pytest.raises(ValueError, match=r"decodes the whole image only"):
        engine.decode_with_modes({"tile": 20}, **feeds)


def test_pipeline_resolves_auto_and_notes_the_choice(engine_dir, decoder):
    from asymvq.pipeline.decode_modes import NOTE_REGION, run_decoder_with_modes
    from asymvq.profiling.timing import StageTimer

    engines = load_engine_dir(engine_dir, backend="onnxruntime")
    small, large = _holed(1, 96, 128, (21, 50, 43, 70)), _holed(1, 96, 128, (3, 93, 2, 126))
    for feeds, decodes_box in ((small, True), (large, False)):
        timer = StageTimer(torch.device("cpu"))
        got = run_decoder_with_modes(engines, timer, feeds["latent"], feeds["image"], feeds["mask"], {"region": "auto"})
        choice = timer.notes[NOTE_REGION]
        assert choice.decodes_box == decodes_box and [n for n, _ in timer.collect()] == ["decode"]
        with torch.inference_mode():
            ref = decoder.decoder(feeds["latent"], feeds["image"], feeds["mask"], region="auto")
        torch.testing.assert_close(got, ref, atol=ATOL, rtol=0)
    with pytest.raises(ValueError, match=r"^margin: only with region"):
        run_decoder_with_modes(engines, StageTimer(torch.device("cpu")), small["latent"], small["image"], small["mask"],
                               {"margin": 2})
    with pytest.raises(ValueError, match=r"tiled decoding runs on the torch backend only; .*'onnxruntime'"):
        run_decoder_with_modes(engines, StageTimer(torch.device("cpu")), small["latent"], small["image"], small["mask"],
                               {"tile": 20})
    # a crop decoded alone has its own statistics: "lowres" is the torch decoder's
    assert capabilities(engines["decoder"]).region_stats == ("box",)
    with pytest.raises(ValueError, match=r"^region_stats: 'lowres' runs on the torch backend only; this pipeline's "
                                         r"'decoder' engine \(onnxruntime\)"):
        run_decoder_with_modes(engines, StageTimer(torch.device("cpu")), small["latent"], small["image"], small["mask"],
                               {"region": "auto", "region_stats": "lowres"})
    with pytest.raises(ValueError, match=r"^region_stats: 'lowres' runs on the torch backend only; the onnxruntime"):
        engines["decoder"].decode_with_modes({"region": "mask", "region_stats": "lowres"}, **small)
