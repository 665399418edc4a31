"""Region decoding in the C++ host (issue 22 item 1): asymvq_decode_region / asymvq-run --decode-region mask on
the tiny AOTInductor engines of the host fixtures (no new export), against the Python region decode of the
torch decoder rebuilt from the same manifest and of the Python AOTInductor engine; the crop snapped to a
narrowed exported range (a copy of the decoder package under an edited manifest), and refused above it."""
from __future__ import annotations

import json
import shutil
import subprocess

import asymvq_host
import pytest
import torch
from safetensors.torch import load_file, save_file

from asymvq.engines import load_engine_dir
from asymvq.models.region import DEFAULT_MARGIN, mask_box

TOL = 1e-4  # the AOTInductor package against torch eager, fp32


def _inputs(batch=2, lh=12, lw=16, hole=(21, 50, 43, 70), seed=3):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(batch, 4, lh, lw, generator=g)
    image = torch.rand(1, 3, 8 * lh, 8 * lw, generator=g) * 2 - 1  # batch 1 broadcasts
    mask = torch.zeros(1, 1, 8 * lh, 8 * lw)
    y0, y1, x0, x1 = hole  # off the latent grid
    mask[..., y0:y1, x0:x1] = 1
    return z, image, mask


@pytest.fixture(scope="module")
def torch_decoder(tiny):
    return load_engine_dir(tiny, backend="torch", components=["decoder"])["decoder"].module.decoder


def test_region_decode_matches_python(lib, tiny, torch_decoder):
    z, image, mask = _inputs()
    aoti = load_engine_dir(tiny, backend="aoti", components=["decoder"])["decoder"]
    with asymvq_host.Host(lib, tiny) as host:
        for margin in (0, 2):
            got = torch.from_numpy(host.decode_region(z, image, mask, margin))
            with torch.inference_mode():
                ref = torch_decoder(z, image, mask, region="mask", margin=margin)
            py = aoti.decode_with_modes({"region": "mask", "margin": margin}, latent=z, image=image, mask=mask)["sample"]
            assert got.shape == ref.shape == py.shape == (2, 3, 96, 128)
            assert (got - ref).abs().max().item() < TOL and (py - ref).abs().max().item() < TOL
            y0, y1, x0, x1 = mask_box(mask, margin, 12, 16)
            outside = torch.ones_like(got, dtype=torch.bool)
            outside[..., 8 * y0:8 * y1, 8 * x0:8 * x1] = False
            assert torch.equal(got[outside], image.expand_as(got)[outside])  # the source itself
        # margin < 0 is the library's default: the manifest's region.default_margin, which the export took from Python
        default = host.decode_region(z, image, mask)
        assert (default == host.decode_region(z, image, mask, DEFAULT_MARGIN)).all()
        # diffusion-space latents: the same as converting them first
        scaled = host.decode_region(z * 0.18215, image, mask, 1, scaled=True)
        assert abs(scaled - host.decode_region(z, image, mask, 1)).max() < TOL
        # an empty mask decodes nothing
        empty = host.decode_region(z, image, torch.zeros_like(mask))
        assert (torch.from_numpy(empty) == image.expand(2, -1, -1, -1)).all()
        with pytest.raises(asymvq_host.HostError, match=r"image: expected a tensor, got NULL"):
            host.decode_region(z, None, mask)


def _narrowed(tiny, tmp_path, lo, hi):
    """The tiny decoder package under a manifest whose latent h and w range is lo..hi."""
    d = tmp_path / f"narrow-{lo}-{hi}"
    d.mkdir()
    m = json.loads((tiny / "manifest.json").read_text())
    entry = m["components"]["decoder"]
    m["components"] = {"decoder": entry}
    for key in ("scheduler", "tokenizer"):  # folders not copied
        m.pop(key, None)
    for spec in entry["inputs"] + entry["outputs"]:
        scale = 1 if spec["name"] == "latent" else 8
        for key, n in (("min", lo), ("opt", lo), ("max", hi)):
            spec[key][2] = spec[key][3] = scale * n
    for rel in entry["artifacts"]["aoti"]["files"]:
        shutil.copy2(tiny / rel, d / rel)
    (d / "manifest.json").write_text(json.dumps(m))
    return d


def test_region_crop_snaps_to_the_exported_range_or_is_refused(lib, tiny, torch_decoder, tmp_path):
    narrow = _narrowed(tiny, tmp_path, 6, 10)
    z, image, mask = _inputs(batch=1, hole=(40, 52, 60, 70))  # box 2x2 latent pixels at margin 0
    aoti = load_engine_dir(narrow, backend="aoti")["decoder"]
    assert aoti.capabilities.region_sizes == ((6, 10), (6, 10))
    with asymvq_host.Host(lib, narrow) as host:
        got = torch.from_numpy(host.decode_region(z, image, mask, 0))
        py = aoti.decode_with_modes({"region": "mask", "margin": 0}, latent=z, image=image, mask=mask)["sample"]
        y0, y1, x0, x1 = mask_box(mask, 0, 12, 16)
        assert (y1 - y0, x1 - x0) == (2, 2)
        # grown around its centre to 6x6 latent pixels, inside the image: rows 3..9, columns 5..11
        c = (slice(None), slice(None), slice(24, 72), slice(40, 88))
        with torch.inference_mode():
            crop = torch_decoder(z[:, :, 3:9, 5:11], image[c], mask[c])
        assert (got[c] - crop).abs().max().item() < TOL and (py[c] - crop).abs().max().item() < TOL
        outside = torch.ones_like(got, dtype=torch.bool)
        outside[c] = False
        assert torch.equal(got[outside], image.expand_as(got)[outside])
        big = torch.zeros_like(mask)
        big[..., 8:96, 8:20] = 1  # 11 latent pixels tall, above the range's 10
        with pytest.raises(asymvq_host.HostError, match=r"region: the mask's box is 11 latent pixels along the height "
                                                        r".*above the 10 .*needs a dynamic engine") as e:
            host.decode_region(z, image, big, 0)
        assert e.value.status == asymvq_host.INVALID_ARGUMENT
    with pytest.raises(ValueError, match=r"region: the mask's box is 11 latent pixels along the height .*needs a "
                                         r"dynamic engine"):
        aoti.decode_with_modes({"region": "mask", "margin": 0}, latent=z, image=image, mask=big)
    # "auto" decodes the whole image instead of refusing (here refused in turn: 12 is outside 6..10 too)
    with pytest.raises(ValueError, match=r"latent must have shape .* within \[1, 4, 6, 6\]"):
        aoti.decode_with_modes({"region": "auto", "margin": 0}, latent=z, image=image, mask=big)


def test_runner_decode_region(runner, tiny, lib, tmp_path):
    z, image, mask = _inputs(batch=1)
    paths = {}
    for name, t in (("z", z), ("image", image), ("mask", mask)):
        paths[name] = tmp_path / f"{name}.safetensors"
        save_file({name: t.contiguous()}, str(paths[name]))
    out = tmp_path / "out.safetensors"
    base = [runner, "decode", "--engines", tiny, "--latents", paths["z"], "--image", paths["image"], "--mask", paths["mask"]]
    r = subprocess.run([*map(str, base), "--decode-region", "mask", "--margin", "1", "--out", str(out)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    with asymvq_host.Host(lib, tiny) as host:
        want = host.decode_region(z, image, mask, 1)
    assert (load_file(str(out))["sample"].numpy() == want).all()
    for extra, message in ((["--decode-region", "box"], "--decode-region: expected mask, auto or full, got 'box'"),
                           (["--margin", "2"], "--margin: only with --decode-region mask or auto"),
                           (["--decode-region", "mask", "--margin", "-1"], "--margin: expected an integer >= 0")):
        r = subprocess.run([*map(str, base), *extra, "--out", str(out)], capture_output=True, text=True)
        assert r.returncode == asymvq_host.INVALID_ARGUMENT and message in r.stderr, r.stderr
