"""Fast checks of the export signatures, shape ranges, manifest refusals and the ONNX Runtime
engine's binding, on hand-made graphs (no torch export here)."""
import json

import onnx
import pytest
import torch
from onnx import TensorProto, helper

from asymvq.engines import COMPONENT_IO
from asymvq.engines.manifest import artifact_entry, new_manifest, write_manifest
from asymvq.export import (
    COMPONENTS,
    DEFAULT_SHAPES,
    ManifestError,
    Shapes,
    Source,
    TensorSpec,
    build_module,
    io_specs,
    parse_components,
    parse_shapes,
    read_manifest,
    verify_artifact,
)
from asymvq.export.precision import Fp32GroupNorm, to_fp16
from asymvq.export.trace import dynamic_shapes, example_specs
from asymvq.models.components import FAMILY_COMPONENTS
from asymvq.models.latent_space import LatentSpace


def test_export_names_are_the_engines_names():
    assert COMPONENTS == tuple(COMPONENT_IO)
    sources = {"tiny": Source(preset="tiny"), "tiny-sdxl": Source(preset="tiny-sdxl"),
               "tiny-flux-fill": Source(preset="tiny-flux-fill", decoder="tiny-asuka")}
    done = set()
    for source in sources.values():
        for name in FAMILY_COMPONENTS[source.family]:
            if name == "decoder" and source.family == "sdxl":
                continue  # no conditional decoder preset of SDXL's scale; the decoder is checked by the others
            module = build_module(name, source)
            inputs, outputs = io_specs(name, module, DEFAULT_SHAPES["tiny"], "fp32", source.latent_space([name]))
            assert (tuple(s.name for s in inputs), tuple(s.name for s in outputs)) == COMPONENT_IO[name]
            done.add(name)
    assert done == set(COMPONENTS)


def test_family_specs_bind_their_sizes():
    """SDXL's UNet runs on twice the batch (CFG) and FLUX's transformer does not (distilled guidance); both take
    latents in multiples of 2, and the transformer's mask is the image's size."""
    sdxl = build_module("sdxl-unet", Source(preset="tiny-sdxl"))
    inputs, _ = io_specs("sdxl-unet", sdxl, DEFAULT_SHAPES["tiny"], "fp32")
    by = {s.name: s for s in inputs}
    assert by["sample"].max == (8, 9, 16, 16) and by["text_embeds"].dims == ("batch", 32)
    assert by["time_ids"].dims == ("batch", 6) and by["encoder_hidden_states"].dims == ("batch", 77, 64)
    flux = build_module("flux-transformer", Source(preset="tiny-flux-fill"))
    inputs, _ = io_specs("flux-transformer", flux, DEFAULT_SHAPES["tiny"], "fp32")
    by = {s.name: s for s in inputs}
    assert by["sample"].min == (1, 16, 2, 2) and by["sample"].max == (4, 16, 16, 16)
    assert by["mask"].dims == ("batch", 1, "8*h", "8*w") and by["encoder_hidden_states"].dims == ("batch", 8, 32)
    assert by["guidance"].dtype == by["timestep"].dtype == "float32"


def test_fp16_specs_keep_integer_ids_and_fp32_timesteps():
    unet = build_module("unet", Source(preset="tiny"))
    inputs, outputs = io_specs("unet", unet, DEFAULT_SHAPES["tiny"], "fp16")
    assert [s.dtype for s in inputs] == ["float16", "float32", "float16"] and outputs[0].dtype == "float16"
    te = build_module("text-encoder", Source(preset="tiny"))
    assert io_specs("text-encoder", te, DEFAULT_SHAPES["tiny"], "fp16")[0][0].dtype == "int64"


def test_parse_shapes_and_components():
    s = parse_shapes("batch=1:2:4,height=256", "sd15")
    assert s.batch == (1, 2, 4) and s.height == (256, 256, 256) and s.width == DEFAULT_SHAPES["sd15"].width
    for bad, match in [("batch=4:2:1", "min <= opt <= max"), ("height=100:200:300", "multiples of 8"),
                       ("depth=1", "keys are batch"), ("batch=a", "integers"), ("batch=1:2", "N or min:opt:max")]:
        with pytest.raises(ValueError, match=match):
            parse_shapes(bad, "tiny")
    assert parse_components("all") == ["text-encoder", "vae-encoder", "unet", "decoder", "decoder-plain"]
    assert parse_components("unet,decoder,unet") == ["unet", "decoder"]
    with pytest.raises(ValueError, match="component must be 'all' or one of"):
        parse_components("vae")


def test_unet_ranges_must_fit_its_downsampling():
    unet = build_module("unet", Source(preset="tiny"))  # 2 levels: latents a multiple of 2
    for opt_max in [(72, 80), (64, 88)]:
        with pytest.raises(ValueError, match="opt and max height and width multiples of 16"):
            io_specs("unet", unet, Shapes((1, 1, 1), (16, *opt_max), (64, 64, 64)), "fp32")
    # a minimum is a lower bound: rounded up to the multiple (40 px = latent 5 -> 6), not refused
    sample = io_specs("unet", unet, Shapes((1, 1, 1), (40, 64, 64), (8, 64, 64)), "fp32")[0][0]
    assert sample.min[2:] == (6, 2) and sample.opt[2:] == (8, 8)
    decoder = build_module("decoder", Source(preset="tiny"))
    assert io_specs("decoder", decoder, DEFAULT_SHAPES["sd15"], "fp32")[0][0].min[2:] == (1, 1)


def test_bad_sources_are_refused(tmp_path):
    with pytest.raises(ValueError, match="give a preset"):
        Source()
    with pytest.raises(ValueError, match="preset must be one of"):
        Source(preset="sd21")
    with pytest.raises(ValueError, match="local diffusers SD folder"):
        Source(model=str(tmp_path / "nope"))
    with pytest.raises(ValueError, match="needs an SD preset"):
        build_module("unet", Source(preset="x1.5"))
    with pytest.raises(ValueError, match="no condition branch"):
        build_module("decoder", Source(preset="tiny", decoder="vanilla"))


def test_dynamic_shapes_tie_the_image_to_the_latent():
    spec = lambda n, dims, lo, hi: TensorSpec(n, "float32", dims, lo, lo, hi)  # noqa: E731
    ds = dynamic_shapes([spec("latent", ("batch", 4, "h", "w"), (1, 4, 4, 4), (4, 4, 16, 16)),
                         spec("image", ("batch", 3, "8*h", "8*w"), (1, 3, 32, 32), (4, 3, 128, 128))])
    assert set(ds["latent"]) == {0, 2, 3} and set(ds["image"]) == {0, 2, 3}
    assert str(ds["image"][2]) == f"8*{ds['latent'][2]}" or "8" in str(ds["image"][2])
    traced = example_specs([spec("latent", ("batch", 4, "h", "w"), (1, 4, 1, 4), (4, 4, 16, 16)),
                            spec("image", ("batch", 3, "8*h", "8*w"), (1, 3, 8, 32), (4, 3, 128, 128))])
    assert traced[0].opt == (2, 4, 2, 4) and traced[1].opt == (2, 3, 16, 32), "no dim traced at 1; image = 8x latent"
    static = dynamic_shapes([spec("latent", ("batch", 4, "h", "w"), (1, 4, 8, 8), (1, 4, 8, 8))])
    assert static["latent"] == {}


def test_fp16_keeps_group_norm_in_fp32():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(8, 8, 1), torch.nn.GroupNorm(2, 8))
    to_fp16(net)
    assert net[0].weight.dtype == torch.float16
    assert isinstance(net[1], Fp32GroupNorm) and net[1].weight.dtype == torch.float32
    # activations whose squares overflow fp16 (300^2 * 512 values >> 65504) still normalise
    x = 300 * torch.randn(1, 8, 8, 8)
    got = net[1](x.half())
    assert got.dtype == torch.float16 and torch.isfinite(got).all()
    ref = torch.nn.functional.group_norm(x.half().float(), 2, net[1].weight, net[1].bias, net[1].eps)
    torch.testing.assert_close(got.float(), ref, atol=4e-3, rtol=0)


def _identity_dir(tmp_path, component="decoder-plain"):
    """An engines directory whose 'decoder-plain' is a hand-made Identity graph (latent -> sample)."""
    x = helper.make_tensor_value_info("latent", TensorProto.FLOAT, ["batch", 4, "h", "w"])
    y = helper.make_tensor_value_info("sample", TensorProto.FLOAT, ["batch", 4, "h", "w"])
    graph = helper.make_graph([helper.make_node("Identity", ["latent"], ["sample"])], "g", [x], [y])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10), tmp_path / "m.onnx")
    spec = TensorSpec("latent", "float32", ("batch", 4, "h", "w"), (1, 4, 1, 1), (1, 4, 4, 4), (4, 4, 8, 8))
    out = TensorSpec("sample", "float32", ("batch", 4, "h", "w"), (1, 4, 1, 1), (1, 4, 4, 4), (4, 4, 8, 8))
    manifest = new_manifest(precision="fp32", source={"preset": "tiny"}, shapes={}, latent_space=LatentSpace())
    manifest["components"][component] = {
        "weights_sha256": "0" * 64, "inputs": [spec.to_dict()], "outputs": [out.to_dict()],
        "artifacts": {"onnx": artifact_entry(tmp_path, [tmp_path / "m.onnx"], opset=18)},
    }
    write_manifest(tmp_path, manifest)
    return tmp_path


def test_parse_components_takes_the_familys(tmp_path):
    assert parse_components("all", "sdxl") == list(FAMILY_COMPONENTS["sdxl"])
    assert parse_components("unet,decoder") == ["unet", "decoder"]
    with pytest.raises(ValueError, match="'flux-transformer' is not a network of the sd family"):
        parse_components("flux-transformer")
    m = read_manifest(_identity_dir(tmp_path))
    assert m["family"] == "sd"


def test_manifest_refusals(tmp_path):
    with pytest.raises(ManifestError, match="expected a directory"):
        read_manifest(tmp_path / "nope")
    with pytest.raises(ManifestError, match="manifest.json is missing"):
        read_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text("{oops")
    with pytest.raises(ManifestError, match="not valid JSON"):
        read_manifest(tmp_path)
    d = _identity_dir(tmp_path)
    m = read_manifest(d)
    assert verify_artifact(d, "decoder-plain", m["components"]["decoder-plain"], "onnx") == d / "m.onnx"
    for edit, match in [(lambda m: m.update(format_version=3), "format_version 3"),
                        (lambda m: m.update(format_version=1), "format_version 1; this asymvq reads 2 .*re-export"),
                        (lambda m: m["components"].update(vae={}), "unknown component 'vae'"),
                        (lambda m: m["components"]["decoder-plain"].pop("artifacts"), "lacks inputs, outputs or artifacts"),
                        (lambda m: m.update(family="sd3"), "family must be one of \\['sd', 'sdxl', 'flux-fill'\\]"),
                        (lambda m: m["components"].update({"sdxl-unet": m["components"]["decoder-plain"]}),
                         "is a sd directory but holds \\['sdxl-unet'\\]")]:
        bad = json.loads((d / "manifest.json").read_text())
        edit(bad)
        (d / "bad").mkdir(exist_ok=True)
        (d / "bad" / "manifest.json").write_text(json.dumps(bad))
        with pytest.raises(ManifestError, match=match):
            read_manifest(d / "bad")


def test_onnxruntime_engine_binds_and_checks(tmp_path):
    from asymvq.engines import load_engine_dir

    engine = load_engine_dir(_identity_dir(tmp_path))["decoder-plain"]
    x = torch.randn(2, 4, 3, 5)
    a = engine(latent=x)["sample"]
    b = engine(latent=x)["sample"]  # learnt shapes: ORT now writes into a fresh torch tensor
    assert torch.equal(a, x) and torch.equal(b, x) and a.data_ptr() != b.data_ptr()
    assert torch.equal(engine(latent=x.double())["sample"], x)  # cast to the exported dtype
    assert torch.equal(engine(latent=(y := torch.randn(6, 4, 9, 5)))["sample"], y)  # ORT binds no range
    with pytest.raises(ValueError, match=r"latent must have shape \['batch', 4, 'h', 'w'\] \(any positive size"):
        engine(latent=torch.randn(2, 3, 4, 4))
    with pytest.raises(ValueError, match="unexpected \\['image'\\]"):
        engine(latent=x, image=x)
    reuse = load_engine_dir(tmp_path, reuse_outputs=True)["decoder-plain"]
    reuse(latent=x)
    c, d = reuse(latent=x)["sample"], reuse(latent=2 * x)["sample"]
    assert c.data_ptr() == d.data_ptr() and torch.equal(d, 2 * x)


def test_cli_format_and_precision_are_checked():
    from asymvq.cli.export import parse_formats

    assert parse_formats("onnx,trt") == ["onnx", "trt"]
    for bad in ("trt", "onnx,plan", ""):
        with pytest.raises(ValueError, match="--format"):
            parse_formats(bad)


def test_weights_over_the_threshold_go_to_external_data(tmp_path, monkeypatch):
    """The >2 GB path (fp32 SD UNet), exercised on a small conv by lowering the threshold."""
    import onnxruntime as ort

    from asymvq.export import onnx_export

    monkeypatch.setattr(onnx_export, "EXTERNAL_DATA_BYTES", 0)
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(4, 4, 3, padding=1).eval()
    spec = TensorSpec("latent", "float32", ("batch", 4, "h", "w"), (1, 4, 4, 4), (1, 4, 8, 8), (4, 4, 16, 16))
    out = TensorSpec("sample", "float32", ("batch", 4, "h", "w"), (1, 4, 4, 4), (1, 4, 8, 8), (4, 4, 16, 16))
    files = onnx_export.export_onnx(conv, [spec], [out], tmp_path / "conv.onnx")
    assert [f.name for f in files] == ["conv.onnx", "conv.onnx.data"]
    assert files[1].stat().st_size >= 4 * 4 * 9 * 4  # the weights live in the data file
    x = torch.randn(3, 4, 12, 6)
    got = ort.InferenceSession(str(files[0]), providers=["CPUExecutionProvider"]).run(None, {"latent": x.numpy()})[0]
    torch.testing.assert_close(torch.from_numpy(got), conv(x).detach(), atol=1e-5, rtol=0)
