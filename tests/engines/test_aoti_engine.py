"""The tiny decoder as an AOTInductor package: parity with torch at two resolutions and two batch
sizes of one package, the feeds it refuses, and the manifest's hash check. The package is the one the
C++ host's tests load (tests/aoti_engines.py: the CLI's `export --format aoti --preset tiny`, default
shapes), exported once per run for both: an AOTInductor export is about a minute of inductor's C++
compile, and this file and tests/host/ run on the same xdist worker (tests/conftest.py)."""
import json
import shutil

import pytest
import torch
from aoti_engines import cached_engines  # tests/aoti_engines.py

from asymvq.engines import load_engine_dir
from asymvq.engines.manifest import sha256_file
from asymvq.export import ManifestError, Source, build_module

ATOL = 1e-4  # fp32 AOTInductor (CPU) against torch eager
# (batch, height, width) in pixels: two resolutions x two batch sizes, all from one package
GRID = [(1, 64, 64), (3, 64, 64), (1, 96, 128), (3, 96, 128)]


@pytest.fixture(scope="module")
def engine_dir():
    return cached_engines()["tiny"]  # all five components, AOTInductor only


@pytest.fixture(scope="module")
def engine(engine_dir):
    return load_engine_dir(engine_dir)["decoder"]  # no ONNX in the directory: AOTInductor is picked


@pytest.fixture(scope="module")
def decoder():
    return build_module("decoder", Source(preset="tiny"))


def _feeds(b, hh, ww, seed=0):
    g = torch.Generator().manual_seed(seed)
    return dict(latent=torch.randn(b, 4, hh // 8, ww // 8, generator=g),
                image=torch.rand(b, 3, hh, ww, generator=g) * 2 - 1,
                mask=(torch.rand(b, 1, hh, ww, generator=g) > 0.5).float())


def _compare(engine, module, feeds):
    with torch.inference_mode():
        ref = module(**feeds)
    got = engine(**feeds)["sample"]
    assert got.shape == ref.shape and got.dtype == ref.dtype
    torch.testing.assert_close(got, ref, atol=ATOL, rtol=0)


def test_manifest_records_the_package(engine_dir, engine):
    manifest = json.loads((engine_dir / "manifest.json").read_text())
    art = manifest["components"]["decoder"]["artifacts"]
    assert set(art) == {"aoti"}, "--format aoti must not export ONNX"
    assert art["aoti"]["path"] == "decoder.pt2" and art["aoti"]["device"] == "cpu"
    assert art["aoti"]["files"] == {"decoder.pt2": sha256_file(engine_dir / "decoder.pt2")}
    assert engine.backend == "aoti" and engine.input_names == ("latent", "image", "mask")
    assert engine.output_names == ("sample",)


@pytest.mark.parametrize("b,hh,ww", GRID)
def test_decoder_matches_torch(engine, decoder, b, hh, ww):
    _compare(engine, decoder, _feeds(b, hh, ww))


@pytest.mark.parametrize("b,hh,ww", [(1, 48, 64), (2, 8, 8)])
def test_small_images_and_crops_down_to_the_default_minimum_match_torch(engine, decoder, b, hh, ww):
    _compare(engine, decoder, _feeds(b, hh, ww))  # the default minimum: one latent pixel


def test_batch_1_condition_is_broadcast(engine, decoder):
    feeds = _feeds(3, 64, 64)
    feeds["image"], feeds["mask"] = feeds["image"][:1], feeds["mask"][:1]
    _compare(engine, decoder, feeds)


def test_feeds_the_package_would_misread_are_refused(engine):
    feeds = _feeds(1, 64, 64)
    with pytest.raises(ValueError, match=r"image has 8\*h = 72, which does not fit latent's h = 8"):
        engine(latent=feeds["latent"], image=torch.zeros(1, 3, 72, 64), mask=torch.zeros(1, 1, 72, 64))
    with pytest.raises(ValueError, match=r"latent must have shape .*re-export with --shapes"):
        engine(**_feeds(1, 256, 256))  # AOTInductor's range binds: compiled for 1..16 latent pixels
    with pytest.raises(ValueError, match=r"latent must have shape .*within \[1, 4, 1, 1\]..\[4, 4, 16, 16\]"):
        engine(**_feeds(5, 64, 64))


def test_corrupted_package_is_refused(engine_dir, tmp_path):
    d = tmp_path / "copy"
    shutil.copytree(engine_dir, d)
    data = bytearray((d / "decoder.pt2").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (d / "decoder.pt2").write_bytes(bytes(data))
    with pytest.raises(ManifestError, match="decoder aoti artifact .* corrupted or was replaced"):
        load_engine_dir(d)
    with pytest.raises(ManifestError, match="has no 'onnx' artifact"):
        load_engine_dir(engine_dir, backend="onnxruntime")


def test_cli_accepts_aoti_formats():
    from asymvq.cli.export import parse_formats

    assert parse_formats("aoti") == ["aoti"]
    assert parse_formats("onnx,trt,aoti") == ["onnx", "trt", "aoti"]
    with pytest.raises(ValueError, match="trt needs onnx"):
        parse_formats("aoti,trt")


def test_region_decode_equals_the_torch_region_decode(engine, decoder):
    """region="mask" through the package (issue 22 item 1): the crops fit its bound range (1..16 latent pixels)."""
    feeds = _feeds(2, 96, 128)
    mask = torch.zeros(1, 1, 96, 128)
    mask[..., 21:50, 43:70] = 1
    feeds["mask"] = mask
    assert engine.capabilities.region_sizes == ((1, 16), (1, 16))
    got = engine.decode_with_modes({"region": "mask", "margin": 1}, **feeds)["sample"]
    with torch.inference_mode():
        ref = decoder.decoder(feeds["latent"], feeds["image"], mask, region="mask", margin=1)
    torch.testing.assert_close(got, ref, atol=ATOL, rtol=0)
