"""The C++ host reads the latent space from manifest.json, as Python does.

ASUKA's tiny decoder (FLUX's latent space: 16 channels, scale 0.3611, shift 0.1159; host_fixtures) is
exported with AOTInductor: asymvq-run and the C API decode diffusion-space latents with it as
``AsymmetricDecoder.decode_scaled`` does, within the host parity tests' 1e-4. The whole inpainting
job on a copy of the tiny directory whose manifest says another scale and shift matches the Python
pipeline on the same copy (both read the numbers from the manifest). Bad latent spaces are refused
by the C API with the Python reader's wording, naming the key.
"""
from __future__ import annotations

import ctypes as C
import json
import shutil
import subprocess

import asymvq_host as capi
import pytest
import torch
from safetensors.torch import load_file, save_file

import asymvq
from asymvq.engines.manifest import read_manifest
from asymvq.models.latent_space import FLUX, SD, LatentSpace

TOL = 1e-4  # as tests/host/test_host_parity.py


@pytest.fixture(scope="module")
def flux(engines):
    return engines["flux-latents"]


@pytest.fixture(scope="module")
def flux_decoder(flux):
    return asymvq.load_decoder(read_manifest(flux)["source"]["decoder"])


def _inputs(batch, h, w, channels, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, channels, h // 8, w // 8, generator=g), torch.rand(batch, 3, h, w, generator=g) * 2 - 1,
            (torch.rand(1, 1, h, w, generator=g) > 0.5).float())


def _save(tmp_path, name, t):
    p = tmp_path / f"{name}.safetensors"
    save_file({name: t.contiguous()}, str(p))
    return p


def test_the_manifest_records_the_decoders_latent_space(flux, tiny):
    m = read_manifest(flux)
    assert LatentSpace.from_dict(m["latent_space"]) == FLUX
    assert m["components"]["decoder"]["inputs"][0]["dims"] == ["batch", 16, "h", "w"]
    assert LatentSpace.from_dict(read_manifest(tiny)["latent_space"]) == SD


def test_the_c_api_reports_the_latent_space(lib, flux, tiny):
    with capi.Host(lib, flux) as host:
        assert host.latent_space() == (16, 0.3611, 0.1159)
    with capi.Host(lib, tiny) as host:
        assert host.latent_space() == (4, 0.18215, 0.0)


@pytest.mark.parametrize("batch,h,w", [(1, 64, 64), (2, 96, 128)])
def test_decode_of_diffusion_latents_matches_python(runner, lib, flux, flux_decoder, tmp_path, batch, h, w):
    z, image, mask = _inputs(batch, h, w, 16, seed=batch)
    with torch.inference_mode():
        ref = flux_decoder.decode_scaled(z, image, mask)
        ref_plain = flux_decoder.decode_scaled(z)
        ref_vae = flux_decoder(z, image, mask)  # the same latents taken as VAE space: no conversion
    out = tmp_path / "out.safetensors"
    args = ["decode", "--engines", flux, "--latents", _save(tmp_path, "z", z), "--image", _save(tmp_path, "image", image),
            "--mask", _save(tmp_path, "mask", mask), "--space", "diffusion", "--out", out]
    r = subprocess.run([str(runner), *map(str, args)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    got = load_file(str(out))["sample"]
    assert got.shape == ref.shape == (batch, 3, h, w)
    assert (got - ref).abs().max().item() < TOL
    with capi.Host(lib, flux) as host:
        assert abs(torch.from_numpy(host.decode(z, image, mask, scaled=True)) - ref).max().item() < TOL
        assert abs(torch.from_numpy(host.decode(z, scaled=True)) - ref_plain).max().item() < TOL
        vae = torch.from_numpy(host.decode(z, image, mask))
    assert (vae - ref_vae).abs().max().item() < TOL
    assert (vae - ref).abs().max().item() > 1e-2  # the conversion really happened


def test_latents_of_another_channel_count_are_refused(lib, flux):
    z, image, mask = _inputs(1, 64, 64, 4)
    with capi.Host(lib, flux) as host:
        for scaled in (False, True):
            with pytest.raises(capi.HostError) as e:
                host.decode(z, image, mask, scaled=scaled)
            assert e.value.status == capi.INVALID_ARGUMENT
            assert e.value.message.startswith("latents: expected shape (B, 16, h, w)"), e.value.message


def test_inpaint_uses_the_manifest_scale_and_shift(lib, tiny, tmp_path):
    """4 channels (the tiny UNet's), scale 0.5, shift 0.1: the C++ job equals the Python pipeline's on the same copy."""
    d = tmp_path / "shifted"
    shutil.copytree(tiny, d)
    m = json.loads((d / "manifest.json").read_text())
    m["latent_space"] = LatentSpace(4, 0.5, 0.1).to_dict()
    (d / "manifest.json").write_text(json.dumps(m))
    g = torch.Generator().manual_seed(7)
    embeds, negative = torch.randn(1, 77, 32, generator=g), torch.randn(1, 77, 32, generator=g)
    image, mask = torch.rand(1, 3, 64, 64, generator=g) * 2 - 1, (torch.rand(1, 1, 64, 64, generator=g) > 0.6).float()
    results = {}
    for name, root in (("shifted", d), ("sd", tiny)):
        pipe = asymvq.InpaintPipeline.from_engines(root, backend="aoti")
        assert pipe.spec.latent_space == LatentSpace.from_dict(json.loads((root / "manifest.json").read_text())["latent_space"])
        denoised = pipe.denoise(prompt_embeds=embeds, negative_prompt_embeds=negative, image=image, mask_image=mask,
                                num_inference_steps=3, guidance_scale=7.5, generator=torch.Generator().manual_seed(0))
        ref = pipe.decode(denoised)
        with capi.Host(lib, root) as host:
            got = torch.from_numpy(host.inpaint(prompt_embeds=embeds, negative_embeds=negative, image=image, mask=mask,
                                                steps=3, guidance_scale=7.5, seed=0))
        assert (got - ref).abs().max().item() < TOL, name
        results[name] = got
    assert (results["shifted"] - results["sd"]).abs().max().item() > 1e-3  # the numbers were used


@pytest.mark.parametrize("value,fragment", [
    (None, "latent_space must be an object with exactly the keys ['channels', 'scaling_factor', 'shift_factor']"),
    ({"channels": 4, "scaling_factor": 0.18215}, "latent_space must be an object with exactly the keys"),
    ({"channels": 4, "scaling_factor": 0, "shift_factor": 0.0}, "latent_space.scaling_factor must be a positive finite number"),
    ({"channels": 4, "scaling_factor": -1.0, "shift_factor": 0.0}, "latent_space.scaling_factor must be a positive finite"),
    ({"channels": 4, "scaling_factor": "0.18215", "shift_factor": 0.0}, "latent_space.scaling_factor must be a positive"),
    ({"channels": 4, "scaling_factor": 1e999, "shift_factor": 0.0}, None),  # Infinity: not JSON for the C++ parser
    ({"channels": 4, "scaling_factor": 0.18215, "shift_factor": "x"}, "latent_space.shift_factor must be a finite number"),
    ({"channels": True, "scaling_factor": 0.18215, "shift_factor": 0.0}, "latent_space.channels must be a positive integer"),
    ({"channels": 4.5, "scaling_factor": 0.18215, "shift_factor": 0.0}, "latent_space.channels must be a positive integer"),
    ({"channels": 0, "scaling_factor": 0.18215, "shift_factor": 0.0}, "latent_space.channels must be a positive integer"),
    ({"channels": 16, "scaling_factor": 0.18215, "shift_factor": 0.0}, "expected 16 channels (latent_space.channels = 16)"),
])
def test_bad_latent_spaces_are_refused_by_python_and_cpp(lib, tiny, tmp_path, value, fragment):
    from asymvq.engines.manifest import ManifestError

    d = tmp_path / "engines"
    shutil.copytree(tiny, d)
    m = json.loads((d / "manifest.json").read_text())
    if value is None:
        del m["latent_space"]
    else:
        m["latent_space"] = value
    (d / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ManifestError, match=r"^engines: .*latent_space"):
        read_manifest(d)
    h = C.c_void_p()
    status = lib.asymvq_open(str(d).encode(), b"cpu", C.byref(h))
    message = lib.asymvq_last_error().decode()
    assert status == capi.MANIFEST and not h and "\n" not in message, (status, message)
    assert fragment is None and "not valid JSON" in message or fragment in message, message


SDXL_LATENTS = LatentSpace(4, 0.13025, 0.0)  # SDXL's VAE: SD's topology and channels, its own scale


def _family_copy(src, dst, family, latent_space=None, keep=("decoder", "decoder-plain")):
    """A copy of ``src``'s decoder packages as an engines directory of ``family`` (no export: the host runs the
    package it is given, and SDXL's decoder is SD's network; the scale is what differs, read from the manifest)."""
    shutil.copytree(src, dst)
    m = json.loads((dst / "manifest.json").read_text())
    m["components"] = {k: v for k, v in m["components"].items() if k in keep}
    m["family"] = family
    if latent_space is not None:
        m["latent_space"] = latent_space.to_dict()
    (dst / "manifest.json").write_text(json.dumps(m))
    read_manifest(dst)  # what Python accepts: a directory of that family's decoders
    return dst


@pytest.mark.parametrize("family", ["sdxl", "flux-fill"])
def test_the_host_decodes_sdxl_and_flux_directories_and_runs_only_that(lib, tiny, flux, tmp_path, family):
    """SDXL (tiny's SD-topology decoder, SDXL's scale 0.13025) and FLUX.1 Fill (16 channels, scale and shift):
    the host decodes diffusion-space latents as the Python engine does; the whole job it refuses by name.
    6-9 s each at load average 13: each AOTInductor package is loaded twice (Python, C++); no export."""
    sdxl = family == "sdxl"
    # SDXL's own decoder is plain: only that package (each one loaded costs seconds, twice: Python and C++)
    d = _family_copy(tiny, tmp_path / family, family, SDXL_LATENTS, keep=("decoder-plain",)) if sdxl \
        else _family_copy(flux, tmp_path / family, family)
    space = LatentSpace.from_dict(read_manifest(d)["latent_space"])
    z, image, mask = _inputs(2, 48, 64, space.channels, seed=3)
    from asymvq.engines import load_engine_dir

    decoders = load_engine_dir(d, backend="aoti")
    ref = decoders["decoder-plain"](latent=space.to_vae(z))["sample"]
    with capi.Host(lib, d) as host:
        assert host.latent_space() == (space.channels, space.scaling_factor, space.shift_factor)
        got = torch.from_numpy(host.decode(z, scaled=True))
        assert got.shape == ref.shape == (2, 3, 48, 64) and (got - ref).abs().max().item() < TOL
        if not sdxl:  # ASUKA's conditional decoder, FLUX's latents
            ref_cond = decoders["decoder"](latent=space.to_vae(z), image=image, mask=mask)["sample"]
            assert (torch.from_numpy(host.decode(z, image, mask, scaled=True)) - ref_cond).abs().max().item() < TOL
        with pytest.raises(capi.HostError) as e:
            host.inpaint(prompt_embeds=torch.zeros(1, 77, 32), negative_embeds=torch.zeros(1, 77, 32), image=image[:1],
                         mask=mask, steps=1, guidance_scale=7.5, seed=0)
        assert e.value.status == capi.UNSUPPORTED
        assert e.value.message.startswith(f"inpaint: {d} is a {family} directory; the C++ host decodes its latents only")
