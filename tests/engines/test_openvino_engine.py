"""OpenVINO engines from one exported directory of the tiny preset (all five components, 64x64,
batch 1..2, exported once for the file: most of its time): fp32 against torch within 1e-4, bf16
against torch fp32 above a PSNR floor, the manifest refusing a corrupted IR, the compiled-model
cache, static reshapes, the whole pipeline and the CLI from the directory."""
import json
import math
import shutil
import sys

import pytest
import torch

pytest.importorskip("openvino")
pytest.importorskip("onnxruntime")  # the IR is converted from the ONNX export

from asymvq.engines import COMPONENT_IO, load_engine_dir
from asymvq.engines.manifest import sha256_file
from asymvq.export import ManifestError, Shapes, Source, build_module, export_directory
from asymvq.models.components import FAMILY_COMPONENTS
from asymvq.models.components import SD as SD_FAMILY

ATOL = 1e-4  # fp32 OpenVINO against torch eager fp32
PSNR_FLOOR_DB = 40.0  # bf16 inference precision against torch fp32, images in [-1, 1] (peak-to-peak 2)
SIZE = 64
SHAPES = Shapes((1, 1, 2), (SIZE, SIZE, SIZE), (SIZE, SIZE, SIZE))  # static size: the export is the file's cost

SD_COMPONENTS = FAMILY_COMPONENTS[SD_FAMILY]  # the tiny preset's directory: SD's components


@pytest.fixture(scope="module")
def ov_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("ov-engines")
    export_directory(out, "all", Source(preset="tiny"), precision="fp32", shapes=SHAPES, formats=["openvino"])
    return out


@pytest.fixture(scope="module")
def fp32_engines(ov_dir):
    return load_engine_dir(ov_dir, backend="openvino", precision="fp32")


@pytest.fixture(scope="module")
def torch_modules():
    return {name: build_module(name, Source(preset="tiny")) for name in SD_COMPONENTS}


def _feeds(name, b, seed=0):
    g = torch.Generator().manual_seed(seed)
    h = SIZE // 8
    if name in ("decoder", "decoder-plain"):
        feeds = dict(latent=torch.randn(b, 4, h, h, generator=g), image=torch.rand(b, 3, SIZE, SIZE, generator=g) * 2 - 1,
                     mask=(torch.rand(b, 1, SIZE, SIZE, generator=g) > 0.5).float())
        return feeds if name == "decoder" else {"latent": feeds["latent"]}
    if name == "unet":
        return dict(sample=torch.randn(2 * b, 9, h, h, generator=g), timestep=torch.full((2 * b,), 981.0),
                    encoder_hidden_states=torch.randn(2 * b, 77, 32, generator=g))
    if name == "vae-encoder":
        return {"image": torch.rand(b, 3, SIZE, SIZE, generator=g) * 2 - 1}
    return {"input_ids": torch.randint(0, 1000, (b, 77), generator=g)}


def _ref(module, feeds):
    with torch.inference_mode():
        return module(**feeds)


def psnr(a, b, peak_to_peak=2.0):
    mse = float(((a.float() - b.float()) ** 2).mean())
    return math.inf if mse == 0 else 10 * math.log10(peak_to_peak ** 2 / mse)


def test_manifest_lists_the_ir_with_hashes(ov_dir):
    manifest = json.loads((ov_dir / "manifest.json").read_text())
    assert set(manifest["components"]) == set(SD_COMPONENTS)
    for name, entry in manifest["components"].items():
        assert set(entry["artifacts"]) == {"openvino"}, "--format openvino alone keeps no ONNX file"
        art = entry["artifacts"]["openvino"]
        assert art["path"] == f"{name}.xml" and set(art["files"]) == {f"{name}.xml", f"{name}.bin"}
        assert art["converted_from"] == "onnx" and art["openvino"].startswith("20")
        for rel, digest in art["files"].items():
            assert sha256_file(ov_dir / rel) == digest
    assert not list(ov_dir.glob("*.onnx")) and not list(ov_dir.glob(".*-onnx-*"))


@pytest.mark.parametrize("name", list(SD_COMPONENTS))
@pytest.mark.parametrize("b", [1, 2])
def test_fp32_matches_torch(fp32_engines, torch_modules, name, b):
    engine = fp32_engines[name]
    assert engine.backend == "openvino" and engine.precision == "fp32"
    feeds = _feeds(name, b)
    got = engine(**feeds)[COMPONENT_IO[name][1][0]]
    ref = _ref(torch_modules[name], feeds)
    assert got.shape == ref.shape and got.dtype == ref.dtype
    torch.testing.assert_close(got, ref, atol=ATOL, rtol=0)


def test_bf16_decoders_keep_the_psnr_floor(ov_dir, torch_modules):
    engines = load_engine_dir(ov_dir, backend="openvino", precision="bf16", components=["decoder", "decoder-plain"])
    for name, engine in engines.items():
        assert engine.precision == "bf16"
        feeds = _feeds(name, 2, seed=3)
        got = engine(**feeds)["sample"]
        assert torch.isfinite(got).all()
        assert psnr(got, _ref(torch_modules[name], feeds)) >= PSNR_FLOOR_DB


def test_precision_is_chosen_from_the_cpu(ov_dir):
    from asymvq.engines.openvino_engine import native_bf16

    engine = load_engine_dir(ov_dir, backend="openvino", components=["decoder-plain"])["decoder-plain"]
    assert engine.precision == ("bf16" if native_bf16() else "fp32")
    with pytest.raises(ValueError, match="precision: expected one of"):
        load_engine_dir(ov_dir, backend="openvino", precision="fp16", components=["decoder-plain"])


def test_the_cpu_picks_openvino_and_caches_compiled_models(ov_dir, tmp_path):
    cache = tmp_path / "cache"
    engines = load_engine_dir(ov_dir, cache_dir=cache, precision="fp32", components=["decoder-plain"])
    assert engines["decoder-plain"].backend == "openvino"  # picked: the directory holds IRs only
    assert any(cache.iterdir()), "the compiled model is cached for the next load"
    again = load_engine_dir(ov_dir, cache_dir=cache, precision="fp32", components=["decoder-plain"])["decoder-plain"]
    feeds = _feeds("decoder-plain", 1)
    torch.testing.assert_close(again(**feeds)["sample"], engines["decoder-plain"](**feeds)["sample"], atol=0, rtol=0)


def test_static_reshape_matches_and_refuses_mismatched_sizes(ov_dir, torch_modules):
    engine = load_engine_dir(ov_dir, backend="openvino", precision="fp32", static_shapes=True,
                             components=["decoder"])["decoder"]
    feeds = _feeds("decoder", 1)
    torch.testing.assert_close(engine(**feeds)["sample"], _ref(torch_modules["decoder"], feeds), atol=ATOL, rtol=0)
    assert list(engine._compiled) == [tuple(tuple(t.shape) for t in feeds.values())]
    with pytest.raises(ValueError, match="latent must have shape"):
        engine(**{**feeds, "latent": torch.randn(1, 4, 4, 4)})


def test_corrupted_ir_is_refused(ov_dir, tmp_path):
    d = tmp_path / "copy"
    shutil.copytree(ov_dir, d, ignore=shutil.ignore_patterns(".openvino-cache"))
    data = bytearray((d / "decoder.bin").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (d / "decoder.bin").write_bytes(bytes(data))
    with pytest.raises(ManifestError, match="decoder openvino artifact .*decoder.bin is corrupted or was replaced"):
        load_engine_dir(d, backend="openvino")
    (d / "unet.xml").write_text((d / "unet.xml").read_text().replace("<layers>", "<layers> "))
    with pytest.raises(ManifestError, match="unet openvino artifact .*unet.xml is corrupted"):
        load_engine_dir(d, backend="openvino", components=["unet"])
    with pytest.raises(ManifestError, match="has no 'onnx' artifact"):
        load_engine_dir(d, backend="onnxruntime", components=["decoder-plain"])


def test_missing_extra_names_it(ov_dir, monkeypatch):
    from asymvq.models.extras import MissingExtraError

    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino -> ImportError
    monkeypatch.delitem(sys.modules, "asymvq.engines.openvino_engine", raising=False)
    with pytest.raises(MissingExtraError, match=r"asymvq\[openvino\]"):
        load_engine_dir(ov_dir, backend="openvino", components=["decoder-plain"])


def test_pipeline_and_cli_run_from_the_directory(ov_dir, tmp_path):
    import numpy as np
    from PIL import Image
    from typer.testing import CliRunner

    from asymvq.cli import app
    from asymvq.pipeline import InpaintPipeline

    image = torch.rand(1, 3, SIZE, SIZE)
    mask = torch.zeros(1, 1, SIZE, SIZE)
    mask[..., 16:48, 16:48] = 1
    kwargs = dict(prompt="a red door", image=image, mask_image=mask, num_inference_steps=3, output_type="pt")
    ov = InpaintPipeline.from_engines(ov_dir, backend="openvino", precision="fp32")
    assert {e.backend for e in ov.stages.engines.values()} == {"openvino"}
    eager = InpaintPipeline.from_engines(ov_dir, backend="torch")  # rebuilt from the recorded source
    got = ov(**kwargs, generator=torch.Generator().manual_seed(0)).images
    ref = eager(**kwargs, generator=torch.Generator().manual_seed(0)).images
    assert got.shape == (1, 3, SIZE, SIZE) and torch.isfinite(got).all()
    torch.testing.assert_close(got, ref, atol=1e-3, rtol=0)
    bf16 = InpaintPipeline.from_engines(ov_dir, backend="openvino", precision="bf16")
    assert torch.isfinite(bf16(**kwargs, generator=torch.Generator().manual_seed(0)).images).all()

    Image.fromarray((np.random.RandomState(0).rand(SIZE, SIZE, 3) * 255).astype("uint8")).save(tmp_path / "img.png")
    hole = np.zeros((SIZE, SIZE), "uint8")
    hole[16:48, 16:48] = 255
    Image.fromarray(hole).save(tmp_path / "mask.png")
    args = ["inpaint", "--engines", str(ov_dir), "--backend", "openvino", "--precision", "bf16", "--image",
            str(tmp_path / "img.png"), "--mask", str(tmp_path / "mask.png"), "--prompt", "a cat", "--out",
            str(tmp_path / "out.png"), "--steps", "2"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    with Image.open(tmp_path / "out.png") as im:
        assert im.size == (SIZE, SIZE)
    result = CliRunner().invoke(app, args[:3] + ["--backend", "onnxruntime"] + args[5:])
    assert isinstance(result.exception, ValueError) and "--precision" in str(result.exception)


def test_a_static_engine_decodes_a_region_at_its_one_size(fp32_engines, torch_modules):
    """Exported at 64x64 only: the crop snaps to the whole 8x8 latent (the full decode), a smaller image is refused
    with the dynamic export it needs (issue 22 item 1)."""
    engine = fp32_engines["decoder"]
    assert engine.capabilities.region_sizes == ((8, 8), (8, 8))
    feeds = _feeds("decoder", 2)
    mask = torch.zeros(1, 1, SIZE, SIZE)
    mask[..., 20:30, 25:40] = 1
    feeds["mask"] = mask
    got = engine.decode_with_modes({"region": "mask", "margin": 0}, **feeds)["sample"]
    torch.testing.assert_close(got, _ref(torch_modules["decoder"], feeds), atol=ATOL, rtol=0)
    small = {"latent": feeds["latent"][:, :, :4, :4], "image": feeds["image"][..., :32, :32], "mask": mask[..., :32, :32]}
    with pytest.raises(ValueError, match=r"region: the openvino decoder engine .* accepts at least 8 latent pixels "
                                         r"along the height, the image has 4; .*needs a dynamic engine"):
        engine.decode_with_modes({"region": "mask"}, **small)
