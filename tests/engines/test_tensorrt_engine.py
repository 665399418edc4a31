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
