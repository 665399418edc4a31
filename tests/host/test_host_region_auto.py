"""Region AUTO in the C++ host, with its cost model read from the engines manifest (issue 22 item 1): the choice
asymvq_decode_region_ex reports (ABI 3) equals asymvq.models.region.choose_region with the manifest's RegionModel
on both sides of the threshold, and flips when a copy of the directory records another model (so the host reads
the manifest, not numbers of its own); its image equals the Python region decode within 1e-4. A directory exported
before the manifest recorded a model still opens, and only what needs the model (AUTO, the default margin) is
refused, naming the re-export; a malformed model is refused at open. asymvq-run prints the choice in
RegionChoice.describe's words. The tiny AOTInductor engines of the host fixtures (no new export)."""
from __future__ import annotations

import json
import shutil
import subprocess

import asymvq_host
import pytest
import torch
from safetensors.torch import save_file

from asymvq.engines import load_engine_dir
from asymvq.engines.manifest import ManifestError, manifest_region, read_manifest
from asymvq.models.region import REGION_MODEL, RegionModel, choose_region, mask_box

TOL = 1e-4  # the AOTInductor package against torch eager, fp32
LH, LW = 8, 16  # latent pixels: a box of 7x15 is 82 % of it, one of 8x14 87.5 %


def _mask(y0, y1, x0, x1):
    mask = torch.zeros(1, 1, 8 * LH, 8 * LW)
    mask[..., y0:y1, x0:x1] = 1
    return mask


PAYS, DOES_NOT = _mask(0, 56, 0, 120), _mask(0, 64, 0, 112)  # at margin 0: predicted 1.25x and 1.17x (package model)


@pytest.fixture(scope="module")
def inputs():
    g = torch.Generator().manual_seed(5)
    return torch.randn(2, 4, LH, LW, generator=g), torch.rand(1, 3, 8 * LH, 8 * LW, generator=g) * 2 - 1


@pytest.fixture(scope="module")
def torch_decoder(tiny):
    return load_engine_dir(tiny, backend="torch", components=["decoder"])["decoder"].module.decoder


@pytest.fixture(scope="module")
def sizes(tiny):
    return load_engine_dir(tiny, backend="aoti", components=["decoder"])["decoder"].region_sizes()


def _decoder_dir(tiny, dest, edit):
    """The tiny decoder package under a copy of the manifest (the decoder alone) that ``edit`` changed."""
    dest.mkdir()
    m = json.loads((tiny / "manifest.json").read_text())
    m["components"] = {"decoder": m["components"]["decoder"]}
    for key in ("scheduler", "tokenizer"):  # folders not copied
        m.pop(key, None)
    for rel in m["components"]["decoder"]["artifacts"]["aoti"]["files"]:
        shutil.copy2(tiny / rel, dest / rel)
    edit(m)
    (dest / "manifest.json").write_text(json.dumps(m))
    return dest


def _with_model(model: RegionModel):
    return lambda m: m.update(region=model.to_dict())


def _check_choice(got: asymvq_host.RegionChoice, want):
    """The host's asymvq_region_choice against Python's RegionChoice."""
    if want.empty:
        assert (got.kind, got.box) == ("none", (0, 0, 0, 0))
    elif want.decodes_box:
        assert (got.kind, got.box) == ("box", want.box)
    else:
        assert (got.kind, got.box) == ("full", (0, LH, 0, LW))
    assert got.share == pytest.approx(want.share, rel=1e-12)
    assert got.predicted_speedup == pytest.approx(want.speedup, rel=1e-12)
    assert got.min_speedup == want.min_speedup


def _host_auto(host, z, image, mask, margin):
    choice = asymvq_host.RegionChoice()
    out = torch.from_numpy(host.decode_region(z, image, mask, margin, region="auto", choice=choice))
    return out, choice


def test_auto_is_python_choice_with_the_manifest_model(lib, tiny, inputs, torch_decoder, sizes):
    model = manifest_region(read_manifest(tiny))
    assert model == REGION_MODEL  # what the export wrote: the package's constants
    z, image = inputs
    with asymvq_host.Host(lib, tiny) as host:
        for mask, decodes_box in ((PAYS, True), (DOES_NOT, False), (torch.zeros_like(PAYS), False)):
            want = choose_region("auto", mask, 0, LH, LW, sizes, model=model)
            assert want.decodes_box is decodes_box
            got, choice = _host_auto(host, z, image, mask, 0)
            _check_choice(choice, want)
            with torch.inference_mode():
                ref = torch_decoder(z, image, mask, region="auto", margin=0)
            assert got.shape == ref.shape == (2, 3, 8 * LH, 8 * LW)
            assert (got - ref).abs().max().item() < TOL
            if decodes_box:
                y0, y1, x0, x1 = want.box
                outside = torch.ones_like(got, dtype=torch.bool)
                outside[..., 8 * y0:8 * y1, 8 * x0:8 * x1] = False
                assert torch.equal(got[outside], image.expand_as(got)[outside])  # the source itself
        # MASK through the same entry point reports its box too; diffusion-space latents as converting them first
        choice = asymvq_host.RegionChoice()
        host.decode_region(z, image, DOES_NOT, 1, region="mask", choice=choice)
        _check_choice(choice, choose_region("mask", DOES_NOT, 1, LH, LW, sizes, model=model))
        scaled = host.decode_region(z * 0.18215, image, PAYS, 0, scaled=True, region="auto")
        assert abs(scaled - _host_auto(host, z, image, PAYS, 0)[0].numpy()).max() < TOL


def test_the_choice_flips_with_the_manifest_model(lib, tiny, inputs, torch_decoder, sizes, tmp_path):
    z, image = inputs
    pays = choose_region("auto", PAYS, 0, LH, LW, sizes)
    strict = RegionModel(default_margin=0, auto_min_speedup=round(pays.speedup + 0.05, 2))  # the 82 % box no longer pays
    cheap = RegionModel(default_margin=0, time_fit=(0.0, 0.5))  # every box pays; the default margin 0
    for name, model, mask, decodes_box in (("strict", strict, PAYS, False), ("cheap", cheap, DOES_NOT, True)):
        d = _decoder_dir(tiny, tmp_path / name, _with_model(model))
        assert manifest_region(read_manifest(d)) == model
        want = choose_region("auto", mask, model.default_margin, LH, LW, sizes, model=model)
        assert want.decodes_box is decodes_box
        assert choose_region("auto", mask, 0, LH, LW, sizes).decodes_box is not decodes_box  # the package's flips
        with asymvq_host.Host(lib, d) as host:
            got, choice = _host_auto(host, z, image, mask, -1)  # -1: the manifest's default margin
            _check_choice(choice, want)
        with torch.inference_mode():
            ref = torch_decoder(z, image, mask, region="mask", margin=0) if decodes_box else torch_decoder(z, image, mask)
        assert (got - ref).abs().max().item() < TOL
    with asymvq_host.Host(lib, tmp_path / "cheap") as host:  # MASK's default margin is the manifest's too
        choice = asymvq_host.RegionChoice()
        host.decode_region(z, image, PAYS, region="mask", choice=choice)
        assert choice.box == mask_box(PAYS, 0, LH, LW) != mask_box(PAYS, REGION_MODEL.default_margin, LH, LW)


def test_a_directory_without_a_region_model(lib, tiny, inputs, runner, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(tiny, old)
    m = json.loads((old / "manifest.json").read_text())
    del m["region"]
    (old / "manifest.json").write_text(json.dumps(m))
    assert manifest_region(read_manifest(old)) is None  # Python reads it, and decides with its own model
    z, image = inputs
    with asymvq_host.Host(lib, old) as host, asymvq_host.Host(lib, tiny) as new:
        # what needs no model runs as before
        assert (host.decode(z, image, PAYS) == new.decode(z, image, PAYS)).all()
        choice = asymvq_host.RegionChoice()
        assert (host.decode_region(z, image, PAYS, 2, choice=choice) == new.decode_region(z, image, PAYS, 2)).all()
        assert choice.kind == "box" and choice.share > 0 and choice.predicted_speedup != choice.predicted_speedup  # NaN
        refusals = (
            (dict(margin=0, region="auto"), "region: ASYMVQ_REGION_AUTO decides with the engines directory's cost model"),
            (dict(margin=-1), "margin: the default (< 0) is the engines directory's region.default_margin"),
        )
        for kw, message in refusals:
            with pytest.raises(asymvq_host.HostError) as e:
                host.decode_region(z, image, PAYS, **kw)
            assert e.value.status == asymvq_host.UNSUPPORTED and message in e.value.message, e.value.message
            assert "records no region model" in e.value.message
            assert "re-export the directory with `asymvq export --format aoti`" in e.value.message
        # the whole job refuses before its loop
        g = torch.Generator().manual_seed(0)
        with pytest.raises(asymvq_host.HostError, match="ASYMVQ_REGION_AUTO decides with") as e:
            host.inpaint(prompt_embeds=torch.randn(1, 77, 32, generator=g), negative_embeds=torch.randn(1, 77, 32, generator=g),
                         image=image, mask=PAYS, steps=2, region="auto")
        assert e.value.status == asymvq_host.UNSUPPORTED
    paths = {}
    for name, t in (("z", z[:1]), ("image", image), ("mask", PAYS)):
        paths[name] = tmp_path / f"{name}.safetensors"
        save_file({name: t.contiguous()}, str(paths[name]))
    r = subprocess.run([str(runner), "decode", "--engines", str(old), "--latents", str(paths["z"]), "--image",
                        str(paths["image"]), "--mask", str(paths["mask"]), "--decode-region", "auto", "--out",
                        str(tmp_path / "out.safetensors")], capture_output=True, text=True)
    assert r.returncode == asymvq_host.UNSUPPORTED and "re-export the directory" in r.stderr, r.stderr


@pytest.mark.parametrize("region,match", [
    ({"default_margin": -1, "time_fit": [0.0, 1.0], "auto_min_speedup": 1.2}, r"region\.default_margin must be an integer >= 0"),
    ({"default_margin": 4, "time_fit": [1.0], "auto_min_speedup": 1.2}, r"region\.time_fit must be two finite numbers"),
    ({"default_margin": 4, "time_fit": [0.0, 1.0], "auto_min_speedup": 0}, r"region\.auto_min_speedup must be a positive"),
    ({"default_margin": 4, "time_fit": [0.0, 1.0]}, r"region must be an object with exactly the keys \['default_margin', "
                                                     r"'time_fit', 'auto_min_speedup'\]"),
])
def test_a_malformed_region_model_is_refused_at_open(lib, tiny, tmp_path, region, match):
    d = tmp_path / "bad"
    d.mkdir()
    m = json.loads((tiny / "manifest.json").read_text())
    m["region"] = region
    (d / "manifest.json").write_text(json.dumps(m))  # refused before any artifact is read
    with pytest.raises(asymvq_host.HostError, match=r"^ASYMVQ_ERR_MANIFEST: engines: .*manifest\.json: " + match) as e:
        asymvq_host.Host(lib, d)
    assert e.value.status == asymvq_host.MANIFEST
    with pytest.raises(ManifestError, match=match):
        read_manifest(d)


def test_decode_region_ex_refusals(lib, tiny, inputs):
    z, image = inputs
    with asymvq_host.Host(lib, tiny) as host:
        bad = asymvq_host.RegionChoice(struct_size=12)
        for kw, message in (
            (dict(region=0), "region: expected ASYMVQ_REGION_MASK (1) or ASYMVQ_REGION_AUTO (2) (asymvq_decode decodes "
                             "the whole image), got 0"),
            (dict(region=7), "got 7"),
            (dict(region="auto", choice=bad), f"choice.struct_size: expected {asymvq_host.RegionChoice().struct_size} "
                                              "(call asymvq_region_choice_init first), got 12"),
        ):
            with pytest.raises(asymvq_host.HostError) as e:
                host.decode_region(z, image, PAYS, **kw)
            assert e.value.status == asymvq_host.INVALID_ARGUMENT and message in e.value.message, e.value.message
        init = asymvq_host.RegionChoice()
        init.struct_size, init.decoded = 0, 5
        lib.asymvq_region_choice_init(init)  # the library's size is the binding's
        assert (init.struct_size, init.decoded) == (asymvq_host.RegionChoice().struct_size, 0)


def test_runner_prints_the_choice(runner, tiny, inputs, sizes, tmp_path):
    z, image = inputs
    base = [runner, "decode", "--engines", tiny, "--out", tmp_path / "out.safetensors"]
    save_file({"z": z[:1].contiguous()}, str(tmp_path / "z.safetensors"))
    save_file({"image": image.contiguous()}, str(tmp_path / "image.safetensors"))
    base += ["--latents", tmp_path / "z.safetensors", "--image", tmp_path / "image.safetensors"]
    for i, (mask, region, margin) in enumerate(((PAYS, "auto", 0), (DOES_NOT, "auto", 0), (DOES_NOT, "mask", 1),
                                                (torch.zeros_like(PAYS), "auto", 0))):
        save_file({"mask": mask.contiguous()}, str(tmp_path / f"mask{i}.safetensors"))
        r = subprocess.run([*map(str, base), "--mask", str(tmp_path / f"mask{i}.safetensors"), "--decode-region", region,
                            "--margin", str(margin)], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        assert r.stdout == f"decoded: {choose_region(region, mask, margin, LH, LW, sizes).describe()}\n"
