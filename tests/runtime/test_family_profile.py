"""The profiler for FLUX.1 Fill and SDXL: tiny presets measured, real sizes counted on the meta device (the
12B FLUX transformer and T5-XXL without allocating), the decoder's share at 4/20/28/50 steps."""
from __future__ import annotations

import json

import pytest
import torch

from asymvq.cli import main
from asymvq.models import family_networks as fam
from asymvq.profiling.family_flops import SHARE_STEPS, count_family_job
from asymvq.profiling.profiler import ProfileConfig, profile


def _params_on_meta(build) -> int:
    with torch.device("meta"):
        return sum(p.numel() for p in build().parameters())


def test_real_presets_have_the_real_sizes():
    """FLUX.1-Fill-dev's transformer is 11.9B parameters, SDXL's inpainting UNet 2.57B (their model cards)."""
    assert abs(_params_on_meta(lambda: fam.build_flux_transformer("flux-fill")) / 11.9e9 - 1) < 0.01
    assert abs(_params_on_meta(lambda: fam.build_sdxl_unet("sdxl")) / 2.567e9 - 1) < 0.01


@pytest.mark.parametrize("preset", ["tiny-flux-fill", "tiny-sdxl"])
def test_family_job_adds_up(preset):
    job = count_family_job(preset, 64, 64, steps=4)
    f, (one, every) = job["flops"], job["denoiser_labels"]
    assert f[every] == 4 * f[one] > 0
    text = [k for k in ("CLIP", "CLIP-G", "T5") if k in f]
    assert text == (["CLIP", "T5"] if "flux" in preset else ["CLIP", "CLIP-G"])
    assert job["diffusion_flops"] == sum(f[k] for k in text) + f["VAE-Enc"] + f[every] + f["Scheduler x 4"]
    for name, d in job["decoders"].items():
        assert d["share_of_job"] == pytest.approx(d["flops"] / (job["diffusion_flops"] + d["flops"]))
        shares = [job["shares_at_steps"][name][str(n)] for n in SHARE_STEPS]
        assert shares == sorted(shares, reverse=True) and shares[0] < 1  # more steps, smaller share
    if "flux" in preset:  # distilled guidance: no CFG batch, at any guidance scale
        assert job["unet_batch"] == 1
    else:
        no_cfg = count_family_job(preset, 64, 64, steps=4, guidance_scale=1.0)
        assert job["unet_batch"] == 2 and f[one] == 2 * no_cfg["flops"][no_cfg["denoiser_labels"][0]]


def test_flux_transformer_count_scales_with_batch():
    one = count_family_job("tiny-flux-fill", 32, 48, steps=1)
    two = count_family_job("tiny-flux-fill", 32, 48, steps=1, batch=2)
    assert two["flops"]["Transformer step"] == 2 * one["flops"]["Transformer step"]


@pytest.mark.parametrize("preset,decoders", [("tiny-flux-fill", ["tiny-flux", "tiny-asuka"]), ("tiny-sdxl", ["tiny"])])
def test_profile_measures_the_tiny_family_presets(preset, decoders):
    report = profile(ProfileConfig(preset=preset, steps=2, warmup=0, repeats=1, height=32, width=32),
                     log=lambda *_: None)
    assert list(report["decoders"]) == decoders
    assert report["stages"]["unet_step"]["count"] == 2
    assert report["diffusion"]["unet_batch"] == (1 if "flux" in preset else 2)
    for name in decoders:
        assert 0 < report["decoders"][name]["decode_share"] < 1


def test_cli_counts_flux_fill_at_1024_on_meta(tmp_path, capsys):
    with pytest.raises(SystemExit) as done:
        main(["profile", "--preset", "flux-fill", "--flops-only", "--json", str(tmp_path / "f.json")])
    out = capsys.readouterr().out
    assert done.value.code in (0, None), out
    assert "flux-fill 1024x1024" in out and "Transformer x 28" in out and "Decoder's share of the job by step" in out
    report = json.loads((tmp_path / "f.json").read_text())
    acc = report["flop_accounting"]
    assert set(acc["decoders"]) == {"flux", "asuka-flux"} and acc["unet_batch"] == 1
    assert report["flops"]["Decoder asuka-flux"] > report["flops"]["Decoder flux"]  # the condition branch costs
