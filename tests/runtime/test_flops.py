"""FLOP accounting (asymvq.profiling.flops): published anchors, attention counted, the job, the CLI and the profile columns.

Everything is counted on the meta device (no weights, no arithmetic), so SD 1.5 at 512x512 takes
seconds. Published figures: the SD VAE decoder is about 2.5 TFLOP at 512x512 and the SD 1.5 UNet
about 1.68 TFLOP per CFG step (batch 2, 64x64 latents); the asymmetric decoders' MACs at 512x512
are in the paper's table (1.56, 4.06, 9.21 TMAC = 2x in FLOP).
"""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from asymvq.cli import main
from asymvq.profiling import flops

TFLOP = 1e12
STEPS = 50


@pytest.fixture(scope="module")
def sd15_job():
    return flops.count_job("sd15", 512, 512, steps=STEPS, decoders=("vanilla", "base", "x1.5", "x2"))


def test_decoders_match_the_published_figures(sd15_job):
    f = sd15_job["flops"]
    assert f["Decoder vanilla"] == pytest.approx(2.5 * TFLOP, rel=0.05)  # SD VAE decoder, published
    # the paper's MACs at 512x512 (asymmetric-vqgan.md), 1 MAC = 2 FLOP
    for name, tmac in (("vanilla", 1.26), ("base", 1.56), ("x1.5", 4.06), ("x2", 9.21)):
        assert f[f"Decoder {name}"] == pytest.approx(2 * tmac * TFLOP, rel=0.01), name


def test_unet_matches_the_published_figure_with_attention_counted(sd15_job):
    f, a = sd15_job["flops"], sd15_job["attention_flops"]
    assert sd15_job["unet_batch"] == 2
    assert f["UNet step (CFG)"] == pytest.approx(1.68 * TFLOP, rel=0.05)
    assert f["UNet x 50 (CFG)"] == STEPS * f["UNet step (CFG)"]
    # without attention the count would be ~15 % short: the attention part is in there
    assert a["UNet step (CFG)"] == pytest.approx(0.252 * TFLOP, rel=0.01)


def _sd15_unet_attention(batch: int, latent: int = 64, text_len: int = 77) -> int:
    """Analytic 4 * B * heads * Lq * Lk * d (= 4 * B * Lq * Lk * C) over SD 1.5's transformer blocks:
    self-attention and cross-attention (77 text tokens) at each resolution."""
    blocks = [(latent, 320, 2 + 3), (latent // 2, 640, 2 + 3), (latent // 4, 1280, 2 + 3), (latent // 8, 1280, 1)]
    total = 0
    for side, c, n in blocks:
        length = side * side
        total += n * (4 * batch * length * length * c + 4 * batch * length * text_len * c)
    return total


def test_attention_difference_equals_the_formula_unet():
    with_attn = flops.count_unet("sd15", 256, 256, 2)
    without = flops.count_unet("sd15", 256, 256, 2, attention=False)
    expected = _sd15_unet_attention(2, latent=32)
    assert with_attn["flops"] - without["flops"] == expected
    assert with_attn["attention_flops"] == expected and with_attn["attention_calls"] == 2 * 16


def test_attention_difference_equals_the_formula_decoder():
    # the mid block's single-head attention over (H/8 * W/8) tokens of 4c channels
    for name, c4 in (("vanilla", 512), ("x1.5", 768)):
        with_attn = flops.count_decoder(name, 256, 128)
        without = flops.count_decoder(name, 256, 128, attention=False)
        length = (256 // 8) * (128 // 8)
        assert with_attn["flops"] - without["flops"] == 4 * 1 * 1 * length * length * c4, name


def test_cpu_flash_attention_kernel_is_counted():
    # Real CPU tensors take _scaled_dot_product_flash_attention_for_cpu, which the stock counter
    # has no formula for; ours registers one.
    q, k, v = torch.randn(2, 3, 40, 16), torch.randn(2, 3, 24, 16), torch.randn(2, 3, 24, 8)
    counted = flops.count(F.scaled_dot_product_attention, q, k, v)
    assert counted["flops"] == 2 * 2 * 3 * 40 * 24 * 16 + 2 * 2 * 3 * 40 * 24 * 8 == counted["attention_flops"]
    assert counted["by_op"]  # counted by the counter itself, not only by our formula


def test_job_labels_shares_and_scheduler():
    job = flops.count_job("tiny", 64, 64, batch=2, steps=3, decoders=("tiny", "vanilla"))
    f = job["flops"]
    assert list(f) == ["CLIP", "VAE-Enc", "UNet step (CFG)", "UNet x 3 (CFG)", "Scheduler step", "Scheduler x 3",
                       "Decoder tiny", "Decoder vanilla"]
    assert job["unet_batch"] == 4 and f["UNet x 3 (CFG)"] == 3 * f["UNet step (CFG)"]
    # DDIM's step is elementwise on the (2, 4, 8, 8) latents: a few ops of 512 elements each
    assert 512 <= f["Scheduler step"] <= 40 * 512
    diffusion = f["CLIP"] + f["VAE-Enc"] + f["UNet x 3 (CFG)"] + f["Scheduler x 3"]
    assert job["diffusion_flops"] == diffusion
    for name, d in job["decoders"].items():
        assert d["job_flops"] == diffusion + f[f"Decoder {name}"]
        assert d["share_of_job"] == pytest.approx(f[f"Decoder {name}"] / d["job_flops"])
    proj = flops.project(job, {"X": 1e12})["gpus"]["X"]["decoders"]["vanilla"]
    assert proj["decode_ms"] == pytest.approx(1e3 * f["Decoder vanilla"] / 1e12)
    assert proj["job_ms"] == pytest.approx(1e3 * job["decoders"]["vanilla"]["job_flops"] / 1e12)
    no_cfg = flops.count_job("tiny", 64, 64, steps=2, decoders=("tiny",), guidance_scale=1.0)
    assert "UNet step" in no_cfg["flops"] and no_cfg["unet_batch"] == 1
    assert no_cfg["flops"]["CLIP"] * 2 == f["CLIP"]  # one prompt, no negative


def test_peak_probe_is_a_probe():
    p = flops.probe_peak("cpu", torch.float32, size=256, seconds=0.05)
    assert p["kind"] == "probe" and p["flops_per_s"] > 1e8 and p["runs"] >= 3 and "not a spec" in p["note"]


def test_cpu_peak_probe_keeps_the_best_of_two_sizes():
    """AMX bf16 peaks at 2048, not 1024: the default CPU probe tries both and names the one it kept."""
    p = flops.probe_peak("cpu", torch.float32, seconds=0.0)
    assert p["op"] in ("matmul 1024x1024x1024", "matmul 2048x2048x2048") and p["runs"] >= 6


def test_cli_flops_only_writes_schema_2(tmp_path, capsys, sd15_job):
    path = tmp_path / "f.json"
    with pytest.raises(SystemExit) as exc:
        main(["profile", "--flops-only", "--preset", "sd15", "--size", "512x512", "--decoders", "vanilla,base,x1.5,x2",
              "--json", str(path)])
    out = capsys.readouterr().out
    assert (exc.value.code or 0) == 0
    report = json.loads(path.read_text())
    assert report["schema"] == "asymvq.profile/2" and report["kind"] == "flops-only" and report["stages"] == {}
    assert report["flops"] == sd15_job["flops"]
    assert report["flop_accounting"]["projection"]["gpus"]["H100 SXM"]["peak_flops_per_s"] == 989e12
    for needle in ("UNet step (CFG)", "UNet x 50 (CFG)", "Decoder x2", "share of job", "H100 SXM", "a floor"):
        assert needle in out


def test_profile_adds_flop_columns_and_the_flop_table(tmp_path, capsys):
    path = tmp_path / "p.json"
    with pytest.raises(SystemExit) as exc:
        main(["profile", "--preset", "tiny", "--decoders", "tiny", "--steps", "1", "--size", "32x32", "--warmup", "0",
              "--repeats", "1", "--flops", "--json", str(path), "--plot", str(tmp_path / "p.png")])
    out = capsys.readouterr().out
    assert (exc.value.code or 0) == 0
    report = json.loads(path.read_text())
    assert report["schema"] == "asymvq.profile/2" and report["peak"]["kind"] == "probe"
    for span in ("text_encode", "vae_encode", "unet_step", "scheduler_step", "diffusion", "decode/tiny"):
        s = report["stages"][span]
        assert s["flops"] > 0 and s["achieved_flops_per_s"] > 0 and s["peak_share"] > 0, span
    assert report["stages"]["unet_step"]["flops"] == report["flops"]["UNet step (CFG)"]
    # the SD 1.5 table next to the tiny run: 512x512, 50 steps, the default decoders
    table = report["flop_table"]
    assert (table["preset"], table["height"], table["steps"]) == ("sd15", 512, 50)
    assert list(table["decoders"]) == ["vanilla", "base", "x1.5", "x2"]
    for needle in ("| Module", "% peak", "a probe at start-up, not a spec", "counted FLOPs (not measured)"):
        assert needle in out


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_peak_probe_on_cuda_fp16():
    p = flops.probe_peak("cuda", torch.float16, size=4096, seconds=0.2)
    assert p["device"] == "cuda" and p["dtype"] == "float16" and p["flops_per_s"] > 1e12
