"""The 16-channel decoders through the engines: ASUKA's (image + mask) and the plain FLUX decoder export
to ONNX and OpenVINO with the latent space in the manifest, and decode like the torch module
(the C++ host and AOTInductor run ASUKA's in tests/host/test_host_latent_space.py)."""
import json

import pytest
import torch

from asymvq.engines import load_engine_dir
from asymvq.export import DEFAULT_SHAPES, Source, build_module, export_directory
from asymvq.models.latent_space import FLUX

pytest.importorskip("onnxruntime")
pytest.importorskip("openvino")

CASES = {"tiny-asuka": "decoder", "tiny-flux": "decoder-plain"}


@pytest.fixture(scope="module", params=sorted(CASES))
def exported(request, tmp_path_factory):
    preset = request.param
    out = tmp_path_factory.mktemp(preset)
    export_directory(out, CASES[preset], Source(decoder=preset), shapes=DEFAULT_SHAPES["tiny"],
                     formats=("onnx", "openvino"))
    return preset, out


def _feeds(component, b, hh, ww):
    g = torch.Generator().manual_seed(b * hh + ww)
    feeds = dict(latent=torch.randn(b, 16, hh // 8, ww // 8, generator=g))
    if component == "decoder":
        feeds.update(image=torch.rand(b, 3, hh, ww, generator=g) * 2 - 1,
                     mask=(torch.rand(1, 1, hh, ww, generator=g) > 0.5).float().expand(b, -1, -1, -1).contiguous())
    return feeds


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_16_channel_decoders_run_on_the_engines(exported, backend):
    preset, out = exported
    component = CASES[preset]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["latent_space"] == FLUX.to_dict()
    assert manifest["components"][component]["inputs"][0]["dims"][1] == 16
    options = {"precision": "fp32"} if backend == "openvino" else {}  # not the CPU's bf16 default
    engine = load_engine_dir(out, backend=backend, **options)[component]
    module = build_module(component, Source(decoder=preset))
    for b, hh, ww in [(1, 64, 64), (2, 96, 128)]:
        feeds = _feeds(component, b, hh, ww)
        with torch.inference_mode():
            ref = module(**feeds)
        torch.testing.assert_close(engine(**feeds)["sample"], ref, atol=1e-4, rtol=0)
