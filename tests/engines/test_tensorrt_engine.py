"""TensorRT plans from the exported ONNX. Runs only where `import tensorrt` works and a CUDA
device is present; TensorRT cannot be installed on this project's machines, so here it skips."""
import pytest
import torch

trt = pytest.importorskip("tensorrt", reason="TensorRT is not installed (it cannot be on this project's CPU machines)")
pytestmark = pytest.mark.gpu

if not torch.cuda.is_available():
    pytest.skip("TensorRT engines need a CUDA device", allow_module_level=True)

from asymvq.engines import load_engine_dir  # noqa: E402
from asymvq.engines.tensorrt_engine import TensorRTEngine, build_plans  # noqa: E402
from asymvq.export import Shapes, Source, TensorSpec, build_module, export_directory, read_manifest  # noqa: E402


@pytest.fixture(scope="module")
def plan_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("trt")
    export_directory(out, "decoder", Source(preset="tiny"), precision="fp32",
                     shapes=Shapes((1, 1, 2), (64, 64, 128), (64, 64, 128)))
    build_plans(out, refit=True)
    return out


def _feeds(b, hh, ww):
    g = torch.Generator().manual_seed(0)
    return dict(latent=torch.randn(b, 4, hh // 8, ww // 8, generator=g),
                image=torch.rand(b, 3, hh, ww, generator=g) * 2 - 1,
                mask=(torch.rand(b, 1, hh, ww, generator=g) > 0.5).float())


def test_plan_matches_torch_across_the_profile(plan_dir):
    manifest = read_manifest(plan_dir)
    art = manifest["components"]["decoder"]["artifacts"]["trt"]
    assert art["refit"] is True and art["tensorrt"] == trt.__version__
    engine = load_engine_dir(plan_dir, device="cuda")["decoder"]
    assert engine.backend == "tensorrt"
    module = build_module("decoder", Source(preset="tiny")).cuda()
    for b, hh, ww in [(1, 64, 64), (2, 128, 96)]:
        feeds = {k: v.cuda() for k, v in _feeds(b, hh, ww).items()}
        with torch.inference_mode():
            ref = module(**feeds)
        got = engine(**feeds)["sample"]
        torch.cuda.synchronize()
        torch.testing.assert_close(got, ref, atol=2e-3, rtol=0)  # TF32 convolutions by default


def test_the_profile_binds(plan_dir):
    # TensorRT runs only inside its optimization profile (64..128 px here): outside is refused before the enqueue
    engine = load_engine_dir(plan_dir, device="cuda")["decoder"]
    for b, hh, ww in [(1, 48, 64), (1, 64, 136), (3, 64, 64)]:
        with pytest.raises(ValueError, match=r"latent must have shape .* within .*re-export with --shapes"):
            engine(**{k: v.cuda() for k, v in _feeds(b, hh, ww).items()})


def test_cuda_graph_replays_static_shapes(tmp_path):
    export_directory(tmp_path, "decoder-plain", Source(preset="tiny"), precision="fp32",
                     shapes=Shapes((1, 1, 1), (64, 64, 64), (64, 64, 64)))
    build_plans(tmp_path)
    entry = read_manifest(tmp_path)["components"]["decoder-plain"]
    specs = [[TensorSpec.from_dict(s) for s in entry[k]] for k in ("inputs", "outputs")]
    graph = TensorRTEngine("decoder-plain", tmp_path / "decoder-plain.plan", *specs, cuda_graph=True)
    plain = TensorRTEngine("decoder-plain", tmp_path / "decoder-plain.plan", *specs)
    for seed in (0, 1):
        x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(seed)).cuda()
        torch.testing.assert_close(graph(latent=x)["sample"], plain(latent=x)["sample"], atol=0, rtol=0)


def test_region_crop_snaps_to_the_profile(plan_dir):
    """region="mask" through the plan (issue 22 item 1): the mask's box grows to the profile's smallest latent
    (8x8 here), decoded by the same plan; the rest is the source."""
    from asymvq.models.region import mask_box, snap_box

    engine = load_engine_dir(plan_dir, device="cuda")["decoder"]
    assert engine.capabilities.region_sizes == ((8, 16), (8, 16))
    feeds = {k: v.cuda() for k, v in _feeds(1, 128, 128).items()}
    feeds["mask"] = torch.zeros_like(feeds["mask"])
    feeds["mask"][..., 50:70, 60:75] = 1
    got = engine.decode_with_modes({"region": "mask", "margin": 0}, **feeds)["sample"]
    y0, y1, x0, x1 = snap_box(mask_box(feeds["mask"], 0, 16, 16), 16, 16, ((8, 16), (8, 16)))
    assert (y1 - y0, x1 - x0) == (8, 8)
    box = (slice(None), slice(None), slice(8 * y0, 8 * y1), slice(8 * x0, 8 * x1))
    module = build_module("decoder", Source(preset="tiny")).cuda()
    with torch.inference_mode():
        ref = module(latent=feeds["latent"][:, :, y0:y1, x0:x1], image=feeds["image"][box], mask=feeds["mask"][box])
    torch.cuda.synchronize()
    torch.testing.assert_close(got[box], ref, atol=2e-3, rtol=0)
    outside = torch.ones_like(got, dtype=torch.bool)
    outside[box] = False
    assert torch.equal(got[outside], feeds["image"][outside])
