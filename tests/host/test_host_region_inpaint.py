"""Region decoding in the C++ host's whole job (issue 22 item 1): asymvq_inpaint's params.region / margin (ABI 2) and
`asymvq-run inpaint --decode-region mask|auto`, against asymvq.InpaintPipeline on the same tiny AOTInductor engines of
the host fixtures (no new export) with decode_options={"region": ...}; the choice reported in params.region_choice
(ABI 3) and printed by asymvq-run, as asymvq.models.region.choose_region makes it; an ABI 1 caller (the struct_size of
the old layout) still runs and decodes the whole image, an ABI 2 one its region, with no choice written; bad region
values refused."""
from __future__ import annotations

import ctypes
import subprocess

import asymvq_host
import pytest
import torch
from safetensors.torch import load_file, save_file

import asymvq
from asymvq.models.region import DEFAULT_MARGIN, RegionChoice, choose_region, mask_box

TOL = 1e-4  # test_host_parity.py's: the host's loop and the Python pipeline on the same packages
H, W = 64, 128  # latent 8x16: a box of a few latent pixels is a small share of it
JOB = dict(steps=2, guidance_scale=7.5, seed=0)


@pytest.fixture(scope="module")
def pipe(tiny):
    return asymvq.InpaintPipeline.from_engines(tiny, backend="aoti")


def _mask(y0, y1, x0, x1):
    mask = torch.zeros(1, 1, H, W)
    mask[..., y0:y1, x0:x1] = 1
    return mask


@pytest.fixture(scope="module")
def inputs():
    g = torch.Generator().manual_seed(11)
    return dict(embeds=torch.randn(1, 77, 32, generator=g), negative=torch.randn(1, 77, 32, generator=g),
                image=torch.rand(1, 3, H, W, generator=g) * 2 - 1)


def _python(pipe, inputs, mask, options):
    denoised = pipe.denoise(prompt_embeds=inputs["embeds"], negative_prompt_embeds=inputs["negative"],
                            image=inputs["image"], mask_image=mask, num_inference_steps=JOB["steps"],
                            guidance_scale=JOB["guidance_scale"], generator=torch.Generator().manual_seed(JOB["seed"]))
    return pipe.decode(denoised, decode_options=options)


def _host(host, inputs, mask, **kw):
    return torch.from_numpy(host.inpaint(prompt_embeds=inputs["embeds"], negative_embeds=inputs["negative"],
                                         image=inputs["image"], mask=mask, **JOB, **kw))


def _check_choice(got: asymvq_host.RegionChoice, want: RegionChoice):
    assert (got.kind, got.box) == (("box", want.box) if want.decodes_box else ("full", (0, H // 8, 0, W // 8)))
    assert (got.share, got.predicted_speedup) == pytest.approx((want.share, want.speedup), rel=1e-12)


def _outside(box):
    y0, y1, x0, x1 = box
    outside = torch.ones(1, 3, H, W, dtype=torch.bool)
    outside[..., 8 * y0:8 * y1, 8 * x0:8 * x1] = False
    return outside


def test_region_inpaint_matches_the_pipeline(lib, tiny, pipe, inputs):
    mask = _mask(10, 31, 80, 101)  # off the latent grid
    with asymvq_host.Host(lib, tiny) as host:
        decoded = asymvq_host.RegionChoice()
        full = _host(host, inputs, mask, region_choice=decoded)
        _check_choice(decoded, RegionChoice(None, None, 1.0, 1.0))  # no region: the whole image
        for margin in (1, -1):  # -1: the default, Python's DEFAULT_MARGIN
            got = _host(host, inputs, mask, region="mask", margin=margin, region_choice=decoded)
            _check_choice(decoded, choose_region("mask", mask, margin if margin >= 0 else DEFAULT_MARGIN, H // 8, W // 8))
            ref = _python(pipe, inputs, mask, {"region": "mask", **({"margin": margin} if margin >= 0 else {})})
            assert got.shape == ref.shape == (1, 3, H, W)
            assert (got - ref).abs().max().item() < TOL
            box = mask_box(mask, margin if margin >= 0 else DEFAULT_MARGIN, H // 8, W // 8)
            assert box != (0, 8, 0, 16)  # a crop, not the whole latent
            outside = _outside(box)
            assert torch.equal(got[outside], inputs["image"][outside])  # the source itself
            assert (full[outside] - inputs["image"][outside]).abs().max().item() > 1e-2  # the full decode is not
        # an ABI 1 caller: its struct ends before region/margin, which are never read (garbage there is harmless)
        old = _host(host, inputs, mask, region=99, margin=7, struct_size=asymvq_host.V1_SIZE)
        assert torch.equal(old, full)
        # an ABI 2 caller: region and margin read, its struct ends before region_choice (never read nor written)
        untouched = asymvq_host.RegionChoice(decoded=7)
        v2 = _host(host, inputs, mask, region="mask", margin=1, region_choice=untouched, struct_size=asymvq_host.V2_SIZE)
        assert torch.equal(v2, _host(host, inputs, mask, region="mask", margin=1)) and untouched.decoded == 7


def test_auto_decodes_the_box_only_when_it_pays(lib, tiny, pipe, inputs):
    # margin 0, boxes of 7x15 and 8x14 latent pixels: shares 0.82 and 0.875, on the two sides of Python's threshold
    cases = [(_mask(0, 56, 0, 120), True), (_mask(0, 64, 0, 112), False)]
    with asymvq_host.Host(lib, tiny) as host:
        full = _host(host, inputs, cases[0][0])
        for mask, decodes_box in cases:
            choice = choose_region("auto", mask, 0, H // 8, W // 8)
            assert choice.decodes_box is decodes_box
            decoded = asymvq_host.RegionChoice()
            got = _host(host, inputs, mask, region="auto", margin=0, region_choice=decoded)
            _check_choice(decoded, choice)
            ref = _python(pipe, inputs, mask, {"region": "auto", "margin": 0})
            assert (got - ref).abs().max().item() < TOL
            if decodes_box:
                outside = _outside(choice.box)
                assert torch.equal(got[outside], inputs["image"][outside])
        # the first mask's box decode is not the full decode
        assert (_host(host, inputs, cases[0][0], region="auto", margin=0) - full).abs().max().item() > 1e-2


def test_region_params_refused(lib, tiny, inputs):
    mask = _mask(10, 31, 80, 101)
    with asymvq_host.Host(lib, tiny) as host:
        for kw, message in (
            (dict(region=7), "region: expected ASYMVQ_REGION_NONE (0), ASYMVQ_REGION_MASK (1) or ASYMVQ_REGION_AUTO (2), "
                             "got 7"),
            (dict(region=-1), "got -1"),
            (dict(margin=2), "margin: expected -1 without a region"),
            (dict(struct_size=asymvq_host.V1_SIZE + 4),
             f"params.struct_size: expected {ctypes.sizeof(asymvq_host.Params)} (call asymvq_inpaint_params_init "
             f"first; or {asymvq_host.V2_SIZE} or {asymvq_host.V1_SIZE}, the ABI 2 and 1 layouts), got "
             f"{asymvq_host.V1_SIZE + 4}"),
            (dict(region="mask", region_choice=asymvq_host.RegionChoice(struct_size=8)),
             f"params.region_choice.struct_size: expected {ctypes.sizeof(asymvq_host.RegionChoice)} (call "
             "asymvq_region_choice_init first), got 8"),
        ):
            with pytest.raises(asymvq_host.HostError) as e:
                _host(host, inputs, mask, **kw)
            assert e.value.status == asymvq_host.INVALID_ARGUMENT and message in e.value.message, e.value.message


def test_runner_inpaint_decode_region(runner, tiny, lib, inputs, tmp_path):
    mask = _mask(10, 31, 80, 101)
    paths = {}
    for name, t in (("embeds", inputs["embeds"]), ("negative", inputs["negative"]), ("image", inputs["image"]),
                    ("mask", mask)):
        paths[name] = tmp_path / f"{name}.safetensors"
        save_file({name: t.contiguous()}, str(paths[name]))
    out = tmp_path / "out.safetensors"
    base = [runner, "inpaint", "--engines", tiny, "--prompt-embeds", paths["embeds"], "--negative-embeds", paths["negative"],
            "--image", paths["image"], "--mask", paths["mask"], "--steps", JOB["steps"], "--seed", JOB["seed"]]
    with asymvq_host.Host(lib, tiny) as host:
        for region, margin in (("mask", 1), ("auto", 2)):
            r = subprocess.run([*map(str, base), "--decode-region", region, "--margin", str(margin), "--out", str(out)],
                               capture_output=True, text=True)
            assert r.returncode == 0, r.stderr
            want = _host(host, inputs, mask, region=region, margin=margin)
            assert torch.equal(load_file(str(out))["sample"], want)
            assert r.stdout == f"decoded: {choose_region(region, mask, margin, H // 8, W // 8).describe()}\n"
    for extra, message in ((["--decode-region", "box"], "--decode-region: expected mask, auto or full, got 'box'"),
                           (["--margin", "2"], "--margin: only with --decode-region mask or auto")):
        r = subprocess.run([*map(str, base), *extra, "--out", str(out)], capture_output=True, text=True)
        assert r.returncode == asymvq_host.INVALID_ARGUMENT and message in r.stderr, r.stderr
