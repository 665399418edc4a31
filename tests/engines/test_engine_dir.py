"""An engines directory of the tiny preset, exported once (about 100 s of the file's time):
ONNX Runtime against torch at two resolutions and two batch sizes of one exported file,
the manifest and its refusals, and the whole pipeline run from the directory."""
import json
import shutil

import pytest
import torch

from asymvq.engines import COMPONENT_IO, load_engine_dir, load_scheduler_config, load_tokenizer
from asymvq.engines.manifest import sha256_file
from asymvq.export import DEFAULT_SHAPES, ManifestError, Source, build_module, export_directory
from asymvq.models.components import FAMILY_COMPONENTS
from asymvq.models.components import SD as SD_FAMILY
from asymvq.models.region import REGION_MODEL

pytest.importorskip("onnxruntime")

ATOL = 1e-4  # fp32 ONNX Runtime against torch eager
# (batch, height, width) in pixels: two resolutions x two batch sizes, all in one exported file
GRID = [(1, 64, 64), (3, 64, 64), (1, 96, 128), (3, 96, 128)]

SD_COMPONENTS = FAMILY_COMPONENTS[SD_FAMILY]  # the tiny preset's directory: SD's components


@pytest.fixture(scope="module")
def engine_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("engines")
    export_directory(out, "all", Source(preset="tiny"), precision="fp32", shapes=DEFAULT_SHAPES["tiny"])
    return out


@pytest.fixture(scope="module")
def ort_engines(engine_dir):
    return load_engine_dir(engine_dir)


@pytest.fixture(scope="module")
def torch_modules():
    return {name: build_module(name, Source(preset="tiny")) for name in SD_COMPONENTS}


def _compare(engine, module, feeds, atol=ATOL):
    with torch.inference_mode():
        ref = module(**feeds)
    got = engine(**feeds)[engine.output_names[0]]
    assert got.shape == ref.shape and got.dtype == ref.dtype
    torch.testing.assert_close(got, ref, atol=atol, rtol=0)


def _decoder_feeds(b, hh, ww, seed=0):
    g = torch.Generator().manual_seed(seed)
    return dict(latent=torch.randn(b, 4, hh // 8, ww // 8, generator=g),
                image=torch.rand(b, 3, hh, ww, generator=g) * 2 - 1,
                mask=(torch.rand(b, 1, hh, ww, generator=g) > 0.5).float())


def test_manifest_describes_every_component(engine_dir):
    manifest = json.loads((engine_dir / "manifest.json").read_text())
    assert set(manifest["components"]) == set(SD_COMPONENTS)
    assert manifest["precision"] == "fp32" and manifest["source"]["preset"] == "tiny"
    assert {"torch", "onnx", "onnxruntime", "diffusers"} <= set(manifest["toolchain"])
    assert manifest["region"] == REGION_MODEL.to_dict()  # what the C++ host decides region AUTO with
    for name, entry in manifest["components"].items():
        assert tuple(s["name"] for s in entry["inputs"]) == COMPONENT_IO[name][0]
        assert tuple(s["name"] for s in entry["outputs"]) == COMPONENT_IO[name][1]
        assert len(entry["weights_sha256"]) == 64
        art = entry["artifacts"]["onnx"]
        assert art["opset"] >= 17
        for rel, digest in art["files"].items():
            assert sha256_file(engine_dir / rel) == digest
    dec = {s["name"]: s for s in manifest["components"]["decoder"]["inputs"]}
    assert dec["latent"]["dims"] == ["batch", 4, "h", "w"] and dec["image"]["dims"] == ["batch", 3, "8*h", "8*w"]
    assert dec["latent"]["min"] == [1, 4, 1, 1] and dec["latent"]["max"] == [4, 4, 16, 16]
    unet = {s["name"]: s for s in manifest["components"]["unet"]["inputs"]}
    assert unet["sample"]["min"][2:] == [2, 2], "the minimum is rounded up to the UNet's multiple (2)"
    assert unet["sample"]["max"][0] == 8, "the UNet's batch range is doubled for classifier-free guidance"
    assert load_tokenizer(engine_dir).model_max_length == 77
    assert load_scheduler_config(engine_dir)["beta_schedule"] == "scaled_linear"


@pytest.mark.parametrize("b,hh,ww", GRID)
def test_decoder_with_and_without_mask_match_torch(ort_engines, torch_modules, b, hh, ww):
    feeds = _decoder_feeds(b, hh, ww)
    _compare(ort_engines["decoder"], torch_modules["decoder"], feeds)
    _compare(ort_engines["decoder-plain"], torch_modules["decoder-plain"], {"latent": feeds["latent"]})


def test_decoder_broadcasts_a_batch_1_condition(ort_engines, torch_modules):
    feeds = _decoder_feeds(3, 64, 64)
    feeds["image"], feeds["mask"] = feeds["image"][:1], feeds["mask"][:1]
    _compare(ort_engines["decoder"], torch_modules["decoder"], feeds)


@pytest.mark.parametrize("b,hh,ww", GRID)
def test_unet_matches_torch(ort_engines, torch_modules, b, hh, ww):
    g = torch.Generator().manual_seed(b + hh)
    feeds = dict(sample=torch.randn(2 * b, 9, hh // 8, ww // 8, generator=g),
                 timestep=torch.full((2 * b,), 981.0), encoder_hidden_states=torch.randn(2 * b, 77, 32, generator=g))
    _compare(ort_engines["unet"], torch_modules["unet"], feeds)
    feeds["timestep"] = torch.tensor(21)  # a scalar (int) timestep serves the whole batch
    _compare(ort_engines["unet"], torch_modules["unet"], feeds)


def test_vae_encoder_and_text_encoder_match_torch(ort_engines, torch_modules):
    _compare(ort_engines["vae-encoder"], torch_modules["vae-encoder"], {"image": torch.rand(2, 3, 64, 96) * 2 - 1})
    ids = torch.randint(0, 1000, (2, 77), generator=torch.Generator().manual_seed(0))
    _compare(ort_engines["text-encoder"], torch_modules["text-encoder"], {"input_ids": ids})


def test_onnxruntime_runs_outside_the_exported_ranges(ort_engines, torch_modules):
    # ONNX Runtime binds no range: above the 128 px maximum and batch 5 (max 4) match torch too
    _compare(ort_engines["decoder"], torch_modules["decoder"], _decoder_feeds(5, 136, 160))
    feeds = _decoder_feeds(1, 64, 64)
    with pytest.raises(ValueError, match=r"latent must have shape \['batch', 4, 'h', 'w'\] \(any positive size"):
        ort_engines["decoder-plain"](latent=feeds["latent"][:, :3])  # a fixed dim still binds
    with pytest.raises(ValueError, match="missing \\['mask'\\]"):
        ort_engines["decoder"](latent=feeds["latent"], image=feeds["image"])


def test_pipeline_runs_end_to_end_from_the_directory(engine_dir):
    from asymvq.pipeline import InpaintPipeline

    image = torch.rand(1, 3, 64, 64)
    mask = torch.zeros(1, 1, 64, 64)
    mask[..., 16:48, 16:48] = 1
    kwargs = dict(prompt="a red door", image=image, mask_image=mask, num_inference_steps=3, output_type="pt")
    onnx = InpaintPipeline.from_engines(engine_dir)
    assert {e.backend for e in onnx.stages.engines.values()} == {"onnxruntime"}
    eager = InpaintPipeline.from_engines(engine_dir, backend="torch")  # rebuilt from the recorded source
    got = onnx(**kwargs, generator=torch.Generator().manual_seed(0)).images
    ref = eager(**kwargs, generator=torch.Generator().manual_seed(0)).images
    assert got.shape == (1, 3, 64, 64) and torch.isfinite(got).all()
    torch.testing.assert_close(got, ref, atol=1e-3, rtol=0)


def _copy(engine_dir, tmp_path):
    dst = tmp_path / "copy"
    shutil.copytree(engine_dir, dst)
    return dst


def test_corrupted_or_missing_artifact_is_refused(engine_dir, tmp_path):
    d = _copy(engine_dir, tmp_path)
    data = bytearray((d / "decoder.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (d / "decoder.onnx").write_bytes(bytes(data))
    with pytest.raises(ManifestError, match="decoder onnx artifact .* corrupted or was replaced"):
        load_engine_dir(d)
    load_engine_dir(d, components=["decoder-plain"])  # the intact ones still load
    (d / "unet.onnx").unlink()
    with pytest.raises(ManifestError, match="unet onnx artifact .* is missing"):
        load_engine_dir(d, components=["unet"])
    with pytest.raises(ManifestError, match="has no 'trt' artifact"):
        load_engine_dir(d, components=["decoder-plain"], backend="tensorrt")


def test_mismatched_manifest_is_refused(engine_dir, tmp_path):
    d = _copy(engine_dir, tmp_path)
    manifest = json.loads((d / "manifest.json").read_text())
    manifest["components"]["decoder"]["inputs"][2]["name"] = "hole"
    manifest["source"]["seed"] = 1  # the torch backend would rebuild other weights
    (d / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ManifestError, match="decoder has I/O"):
        load_engine_dir(d, components=["decoder"])
    with pytest.raises(ManifestError, match="no longer match the manifest's weights_sha256"):
        load_engine_dir(d, components=["decoder-plain"], backend="torch")


def test_cli_profile_and_inpaint_run_from_the_directory(engine_dir, tmp_path):
    import numpy as np
    from PIL import Image
    from typer.testing import CliRunner

    from asymvq.cli import app

    runner = CliRunner()
    result = runner.invoke(app, ["profile", "--engines", str(engine_dir), "--steps", "1", "--warmup", "0",
                                 "--repeats", "1", "--json", str(tmp_path / "p.json"), "--plot", str(tmp_path / "p.png"),
                                 "--decode-region", "auto", "--margin", "0"])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "p.json").read_text())
    assert list(report["decoders"]) == [engine_dir.name] and report["config"]["preset"] == "tiny"
    # region decoding through ONNX Runtime: the profile's centred quarter hole, box 1:3 of the 4x4 latent
    assert report["decode_region"][engine_dir.name]["decoded"].startswith("box 1:3,1:3 (auto: share 0.25")
    assert "decode region (" in result.output
    Image.fromarray((np.random.RandomState(0).rand(64, 64, 3) * 255).astype("uint8")).save(tmp_path / "img.png")
    hole = np.zeros((64, 64), "uint8")
    hole[16:48, 16:48] = 255
    Image.fromarray(hole).save(tmp_path / "mask.png")
    args = ["inpaint", "--engines", str(engine_dir), "--image", str(tmp_path / "img.png"), "--mask",
            str(tmp_path / "mask.png"), "--prompt", "a cat", "--out", str(tmp_path / "out.png"), "--steps", "2"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    with Image.open(tmp_path / "out.png") as im:
        assert im.size == (64, 64)
    result = runner.invoke(app, args + ["--decode-region", "mask", "--margin", "0"])
    assert result.exit_code == 0, result.output
    with Image.open(tmp_path / "out.png") as out, Image.open(tmp_path / "img.png") as src:
        diff = np.abs(np.asarray(out, np.int16) - np.asarray(src, np.int16))
    keep = np.ones((64, 64), bool)
    keep[16:48, 16:48] = False  # the hole is on the latent grid: the box at margin 0
    assert diff[keep].max() <= 1 and diff[~keep].max() > 1  # outside the box: the source
    result = runner.invoke(app, args[:1] + args[3:])  # neither --model nor --engines
    assert isinstance(result.exception, ValueError) and "give exactly one" in str(result.exception)
