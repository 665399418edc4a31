"""The benchmarks of the decoder family and the newer pipelines compare like with like: the peer diffusers
VAE has the preset's latent space and topology, ASUKA's decoder shares the plain one's weights, and the GPU
anchors sit beside the right variants. Cheap: tiny presets, at most one tiny case or point of a benchmark
(the records are bench/'s scripts); the first test pays for importing diffusers, the memory case for the
tiled decode's planning (35 s for the file under load average 10-15 here, a fraction of it on a quiet machine)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))

pytest.importorskip("diffusers")


@pytest.mark.parametrize("preset, peer_class, peer_preset", [
    ("tiny-flux", "AutoencoderKL", "tiny-flux"), ("tiny-asuka", "AutoencoderKL", "tiny-flux"),
    ("tiny", "AsymmetricAutoencoderKL", "tiny")])
def test_decoder_cpu_peer_has_the_presets_latent_space(preset, peer_class, peer_preset):
    import decoder_cpu

    from asymvq.models import preset_config
    from asymvq.models.checkpoints import decoder_from_vae

    vae = decoder_cpu.diffusers_decoder(preset, seed=0)
    assert type(vae).__name__ == peer_class
    if peer_class == "AutoencoderKL":  # channels, scale, shift and (no) quant convs read back from the peer
        assert decoder_from_vae(vae).config == preset_config(peer_preset)
    ours = decoder_cpu.our_decoder(preset, vae)
    assert ours.config == decoder_cpu.peer_config(preset)
    z = preset_config(preset).latent_space.to_vae(torch.randn(1, ours.config.latent_channels, 4, 4))
    with torch.inference_mode():
        if peer_class == "AutoencoderKL":
            assert torch.allclose(ours(z), vae.decode(z).sample, atol=1e-5)


def test_decoder_cpu_asuka_shares_the_plain_decoders_weights():
    import decoder_cpu

    vae = decoder_cpu.diffusers_decoder("tiny-asuka", seed=0)
    plain = decoder_cpu.our_decoder("tiny-asuka", vae)
    asuka = decoder_cpu.our_asuka("tiny-asuka", plain, seed=0)
    shared = plain.state_dict()
    own = asuka.state_dict()
    assert shared and all(torch.equal(own[k], v) for k, v in shared.items())
    assert any(k.startswith("condition_encoder.") for k in own)
    assert asuka.config.condition == "asuka" and plain.config.condition is None


def test_gpu_anchors_beside_the_matching_variants():
    from gpu_anchors import decoder_anchors

    rows = decoder_anchors("flux", 1024, 1, {"torch": 50.0, "triton": 20.0})
    sglang, unsloth = rows
    assert sglang["compare"]["torch"]["ours_over_theirs"] == pytest.approx(50.0 / 97.6)
    assert sglang["compare"]["triton"]["theirs_ms"] == 29.2
    assert unsloth["compare"]["compile"]["ours_ms"] is None  # not run: no ratio invented
    sdxl = decoder_anchors("sdxl", 1024, 1, {"torch": 90.0, "triton": 60.0})[0]
    assert sdxl["compare"]["best"]["ours_ms"] == 60.0  # TensorRT against our fastest
    assert decoder_anchors("asuka-flux", 1024, 1, {}) and not decoder_anchors("flux", 512, 1, {"torch": 1.0})


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="the RSS high-water mark needs Linux")
def test_decoder_memory_case_measures_one_decode():
    """One case as its fresh process runs it, here in-process on the tiny FLUX decoder (full in bf16, tiled
    2x2 in fp32): a few seconds, most of it the tiled decode's planning."""
    import decoder_memory

    full = decoder_memory.run_case("tiny-flux", 160, 19, "full", "bf16")
    tiled = decoder_memory.run_case("tiny-flux", 160, 19, "tiled", "fp32")
    for row in (full, tiled):
        assert row["finite"] and row["peak_bytes"] >= row["before_bytes"] > 0 and row["added_bytes"] >= 0
    assert full["output_bytes"] == tiled["output_bytes"] == 3 * 160 * 160 * 4  # bf16 as cpu_bf16: the image in fp32
    assert tiled["host_state_bytes"] > 0  # the values between segments, counted
    with pytest.raises(SystemExit, match="fp32 only"):
        decoder_memory.run_case("tiny-flux", 160, 19, "diffusers_tiled", "bf16")


def test_decoder_memory_counts_allocations_on_meta():
    """The counted peak: the image is in it, views are not, a freed tensor leaves it; diffusers' per-tile
    decode holds less than its full one (nothing image-wide between tiles)."""
    import decoder_memory

    mode = decoder_memory._LiveBytes()
    with torch.device("meta"), mode:
        x = torch.empty(1, 4, 256, 256)  # 1 MiB each, counted (an op inside the mode)
        a = x * 2
        b = a + 1
        del a
        b.view(-1)
        c = b * 3
    # x, a and b at once (3 MiB), then a freed and c made: 3 MiB live; the view added nothing
    assert mode.peak == 3 * 2**20 and mode.live == 3 * 2**20 and c.shape == b.shape
    full = decoder_memory.count_case("tiny-flux", 256, 20, "diffusers_full", "fp32")
    tiled = decoder_memory.count_case("tiny-flux", 256, 20, "diffusers_tiled", "fp32")
    assert full["counted_output_bytes"] == tiled["counted_output_bytes"] == 3 * 256 * 256 * 4
    assert full["counted_peak_bytes"] > tiled["counted_peak_bytes"] >= tiled["counted_output_bytes"]
    ours = decoder_memory.count_case("tiny-asuka", 256, 20, "tiled", "bf16")
    assert ours["counted_state_bytes"] > 0 and ours["counted_output_bytes"] == 3 * 256 * 256 * 4  # cpu_bf16's fp32 image


def test_decoder_tiled_point_in_cpu_bf16():
    """One point of the tiled record as ``--dtype bf16`` runs it on the CPU: ours prepared by cpu_bf16 (the
    tiled decode takes its fp32 conv_out), diffusers in fp32, both labelled; PSNR of ours tiled against our
    full decode and against the fp32 one, diffusers' tiling against its own full decode; FLOPs counted."""
    import decoder_tiled

    point = decoder_tiled.run_point("tiny-flux", 160, 19, "cpu", torch.bfloat16, 0, 1, diffusers_dtype=torch.float32)
    assert point["dtype"] == "torch.bfloat16" and point["diffusers_dtype"] == "torch.float32" and point["tiles"] == 4
    m = point["methods"]
    assert m["tiled"]["psnr_db_vs_full"] >= 44 and m["full"]["psnr_db_vs_fp32_full"] >= 40
    assert m["tiled"]["psnr_db_vs_fp32_full"] >= m["full"]["psnr_db_vs_fp32_full"] - 0.5
    assert m["diffusers_tiled"]["psnr_db_vs_diffusers_full"] < 40  # per-tile statistics: the seams we avoid
    assert 1.0 < m["tiled"]["flops_vs_full"] < 1.3 and m["diffusers_tiled"]["flops_vs_full"] > m["tiled"]["flops_vs_full"]
    assert all("out" not in r for r in m.values()) and "ms_vs_diffusers_full" in m["diffusers_tiled"]
