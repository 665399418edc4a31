"""`asymvq export --component decoder --preset tiny --format onnx --out DIR`, and the fp16 export
checked against fp32 (about 70 s: two exports of the tiny decoder)."""
import json

import pytest
import torch
import typer
from typer.testing import CliRunner

from asymvq.cli.export import register
from asymvq.engines import load_engine_dir
from asymvq.export import DEFAULT_SHAPES, Source, build_module, export_directory

pytest.importorskip("onnxruntime")

# fp16 ONNX (GroupNorm in fp32) against the fp32 torch decoder, on outputs of magnitude ~1:
# measured max abs error 0.004-0.008 on the tiny decoder; the bound leaves 2.5x margin.
FP16_ATOL = 2e-2


@pytest.fixture(scope="module")
def cli_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli")
    app = typer.Typer()
    register(app)
    app.command("noop")(lambda: None)  # two commands, so typer keeps the `export` name as in the real CLI
    result = CliRunner().invoke(app, ["export", "--component", "decoder", "--preset", "tiny", "--format", "onnx",
                                      "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def fp16_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("fp16")
    export_directory(out, "decoder", Source(preset="tiny"), precision="fp16", shapes=DEFAULT_SHAPES["tiny"])
    return out


def _feeds(b, hh, ww):
    g = torch.Generator().manual_seed(b * hh)
    return dict(latent=torch.randn(b, 4, hh // 8, ww // 8, generator=g),
                image=torch.rand(b, 3, hh, ww, generator=g) * 2 - 1,
                mask=(torch.rand(b, 1, hh, ww, generator=g) > 0.5).float())


def test_cli_writes_manifest_and_an_onnx_file_with_parity(cli_dir):
    manifest = json.loads((cli_dir / "manifest.json").read_text())
    assert list(manifest["components"]) == ["decoder"]
    assert (cli_dir / manifest["components"]["decoder"]["artifacts"]["onnx"]["path"]).is_file()
    assert not (cli_dir / "tokenizer").exists(), "a decoder-only export needs no tokenizer"
    engine = load_engine_dir(cli_dir)["decoder"]
    module = build_module("decoder", Source(preset="tiny"))
    for b, hh, ww in [(1, 64, 64), (2, 96, 128)]:
        feeds = _feeds(b, hh, ww)
        with torch.inference_mode():
            ref = module(**feeds)
        torch.testing.assert_close(engine(**feeds)["sample"], ref, atol=1e-4, rtol=0)


def test_cli_errors_are_value_errors(tmp_path):
    app = typer.Typer()
    register(app)
    app.command("noop")(lambda: None)
    result = CliRunner().invoke(app, ["export", "--component", "vae", "--preset", "tiny", "--out", str(tmp_path)])
    assert isinstance(result.exception, ValueError) and "component must be 'all' or one of" in str(result.exception)
    result = CliRunner().invoke(app, ["export", "--preset", "tiny", "--precision", "bf16", "--out", str(tmp_path)])
    assert isinstance(result.exception, ValueError) and "--precision" in str(result.exception)


@pytest.mark.parametrize("b,hh,ww", [(1, 64, 64), (3, 128, 96)])
def test_fp16_export_is_close_to_fp32_and_finite(fp16_dir, b, hh, ww):
    manifest = json.loads((fp16_dir / "manifest.json").read_text())
    assert manifest["precision"] == "fp16"
    assert [s["dtype"] for s in manifest["components"]["decoder"]["inputs"]] == ["float16"] * 3
    engine = load_engine_dir(fp16_dir)["decoder"]
    module = build_module("decoder", Source(preset="tiny"))
    feeds = _feeds(b, hh, ww)
    got = engine(**feeds)["sample"]  # fp32 feeds are cast to the engine's fp16 inputs
    assert got.dtype == torch.float16 and torch.isfinite(got).all()
    with torch.inference_mode():
        ref = module(**feeds)
    err = (got.float() - ref).abs().max().item()
    assert err <= FP16_ATOL, f"fp16 max abs error {err:.4f} > {FP16_ATOL}"
    assert err > 0, "an fp16 engine identical to fp32 would mean the export stayed fp32"


def test_fp16_against_fp32_onnx_with_polygraphy(cli_dir, fp16_dir):
    """polygraphy's comparator on the two exported files (it casts the fp32 feeds for the fp16 graph)."""
    from polygraphy.backend.onnxrt import OnnxrtRunner, SessionFromOnnx
    from polygraphy.comparator import Comparator, SimpleCompareFunc
    from polygraphy.logger import G_LOGGER

    feeds = [{k: v.numpy() for k, v in _feeds(b, hh, ww).items()} for b, hh, ww in [(1, 64, 64), (4, 128, 128)]]
    runners = [OnnxrtRunner(SessionFromOnnx(str(cli_dir / "decoder.onnx")), name="fp32"),
               OnnxrtRunner(SessionFromOnnx(str(fp16_dir / "decoder.onnx")), name="fp16")]
    with G_LOGGER.verbosity(G_LOGGER.WARNING):
        results = Comparator.run(runners, data_loader=feeds)
        ok = Comparator.compare_accuracy(results, compare_func=SimpleCompareFunc(atol=FP16_ATOL, rtol=0,
                                                                                  check_error_stat="max"))
    assert bool(ok)
    for _, iterations in results:
        assert all(torch.isfinite(torch.from_numpy(out["sample"].astype("float32"))).all() for out in iterations)
