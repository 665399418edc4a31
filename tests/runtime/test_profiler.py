"""The profiler: stage samples that add up, the decoder summary, the table, the JSON and the chart."""
from __future__ import annotations

import json
import subprocess
import sys
import time

import numpy as np
import PIL.Image
import pytest
import torch

from asymvq.profiling.profiler import SCHEMA, ProfileConfig, default_config, profile
from asymvq.profiling.report import format_table, plot, write_json
from asymvq.profiling.timing import StageTimer, percentile, summarize

STEPS, REPEATS = 2, 2


@pytest.fixture(scope="module")
def report():
    config = ProfileConfig(preset="tiny", decoders=("tiny", "vanilla"), steps=STEPS, height=32, width=32,
                           warmup=1, repeats=REPEATS)
    return profile(config, log=lambda msg: None)


def test_report_has_every_stage_with_the_right_sample_counts(report):
    assert report["schema"] == SCHEMA and report["timer"] == "perf_counter"
    stages = report["stages"]
    counts = {name: s["count"] for name, s in stages.items()}
    assert counts == {"diffusion": REPEATS, "text_encode": REPEATS, "vae_encode": REPEATS,
                      "unet_step": STEPS * REPEATS, "scheduler_step": STEPS * REPEATS,
                      "decode/tiny": REPEATS, "decode/vanilla": REPEATS}
    for s in stages.values():
        assert len(s["samples_ms"]) == s["count"] and all(v > 0 for v in s["samples_ms"])
        assert s["min_ms"] <= s["median_ms"] <= s["p90_ms"]
    assert report["device"]["type"] == "cpu" and report["versions"]["torch"]
    assert report["config"]["decoders"] == ["tiny", "vanilla"]


def test_stages_fit_inside_the_end_to_end_run(report):
    s = report["stages"]
    for i in range(REPEATS):
        inner = (s["text_encode"]["samples_ms"][i] + s["vae_encode"]["samples_ms"][i]
                 + sum(s["unet_step"]["samples_ms"][i * STEPS:(i + 1) * STEPS])
                 + sum(s["scheduler_step"]["samples_ms"][i * STEPS:(i + 1) * STEPS]))
        assert inner <= s["diffusion"]["samples_ms"][i] + 0.01  # rounding of the stored samples


def test_decoder_summary_is_consistent(report):
    s, diffusion = report["stages"], report["diffusion"]
    for name, d in report["decoders"].items():
        decode = s[f"decode/{name}"]["median_ms"]
        assert d["decode_median_ms"] == decode
        assert d["pipeline_median_ms"] == pytest.approx(diffusion["median_ms"] + decode)
        assert d["decode_share"] == pytest.approx(decode / d["pipeline_median_ms"])
        assert d["decode_vs_unet_total"] == pytest.approx(decode / (STEPS * s["unet_step"]["median_ms"]))
        assert d["images_per_s"] == pytest.approx(1e3 / d["pipeline_median_ms"])
        assert d["params"] > 0 and d["memory"]["peak_bytes"] > 0
    # the SD decoder's live parameter count (49.49M, asymmetric-vqgan.md), post_quant_conv included
    assert report["decoders"]["vanilla"]["params"] == 49_490_199


def test_outputs_table_json_png(report, tmp_path):
    table = format_table(report)
    for needle in ("| Module", "| CLIP", f"| UNet x {STEPS} (CFG)", "| Decoder tiny", "| Pipeline (vanilla)",
                   "Throughput (tiny):", "share of total"):
        assert needle in table
    path = write_json(report, tmp_path / "sub" / "p.json")
    assert json.loads(path.read_text()) == json.loads(json.dumps(report))
    png = plot(report, tmp_path / "p.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with PIL.Image.open(png) as im:
        assert im.width > 200 and im.height > 200


def test_profile_any_pipeline_and_leave_it_as_it_was(tiny_pipe):
    """What ``--engines`` needs: profile a given pipeline (any backend) with its own decoder."""
    before = dict(vars(tiny_pipe))
    config = ProfileConfig(decoders=("own",), steps=1, height=32, width=32, warmup=0, repeats=1, scheduler="euler")
    report = profile(config, pipeline=tiny_pipe, log=lambda msg: None)
    assert list(report["decoders"]) == ["own"] and report["stages"]["decode/own"]["count"] == 1
    assert vars(tiny_pipe).keys() == before.keys() and all(vars(tiny_pipe)[k] is v for k, v in before.items())
    with pytest.raises(ValueError, match="^decoders: expected engines named"):
        profile(config, pipeline=tiny_pipe, decoders={"other": tiny_pipe.stages.decoders()}, log=lambda msg: None)


def test_timer_spans_rename_and_collect():
    timer = StageTimer("cpu")
    with timer.span("a"):
        time.sleep(0.02)
    timer.rename = {"a": "decode/x"}
    with timer.span("a"):
        pass
    spans = timer.collect()
    assert [n for n, _ in spans] == ["a", "decode/x"]
    assert spans[0][1] >= 19.0 and spans[1][1] < spans[0][1]
    assert timer.collect() == []


def test_percentiles_match_numpy():
    values = list(np.random.RandomState(0).rand(37) * 100)
    for q in (0, 10, 50, 90, 100):
        assert percentile(values, q) == pytest.approx(np.percentile(values, q))
    s = summarize(values)
    assert s["min_ms"] == min(values) and s["median_ms"] == pytest.approx(np.median(values))


def test_cpu_peak_memory_sees_a_large_allocation():
    # In a fresh process: after other tests, the allocator may hand back pages that are
    # already resident (freed but not returned to the OS), which adds nothing to the RSS.
    code = """
import json, numpy as np
from asymvq.profiling.timing import PeakMemory
memory = PeakMemory("cpu")
memory.reset()
block = np.ones(64 * 2**20 // 8)  # 64 MiB, touched
print(json.dumps(dict(memory.measure(), resettable=memory.resettable)))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    m = json.loads(out.strip().splitlines()[-1])
    assert m["resettable"]  # Linux: the high-water mark resets per measurement
    assert m["added_bytes"] >= 48 * 2**20


def test_config_checks_and_defaults():
    assert default_config(cuda=False).preset == "tiny"
    gpu = default_config(cuda=True)
    assert (gpu.preset, gpu.height, gpu.width, gpu.dtype, gpu.steps) == ("sd15", 512, 512, "fp16", 50)
    assert gpu.decoders == ("vanilla", "base", "x1.5", "x2")
    with pytest.raises(ValueError, match="^steps: expected an integer >= 1"):
        ProfileConfig(steps=0)
    with pytest.raises(ValueError, match="^decoders: expected distinct"):
        ProfileConfig(decoders=("base", "base"))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_profile_on_cuda_uses_events_and_max_allocated():
    config = ProfileConfig(decoders=("tiny", "vanilla"), steps=2, height=64, width=64, device="cuda", dtype="fp16",
                           warmup=1, repeats=2, nvtx=True)
    report = profile(config, log=lambda msg: None)
    assert (report["timer"], report["memory"], report["device"]["type"]) == ("cuda-events", "cuda_max_allocated", "cuda")
    assert report["device"]["name"] and report["versions"]["torch"]
    # the vanilla decoder's fp16 weights alone are ~99 MB, all resident while it decodes
    assert report["decoders"]["vanilla"]["memory"]["peak_bytes"] > 90e6
    assert all(v > 0 for s in report["stages"].values() for v in s["samples_ms"])


def test_region_decoding_is_profiled_and_reported():
    """--decode-region: the conditional decoders decode the box; the report says what each one decoded."""
    config = ProfileConfig(preset="tiny", decoders=("tiny",), steps=1, height=48, width=64, warmup=0,
                           repeats=1, decode_options={"region": "auto", "margin": 0})
    report = profile(config, log=lambda msg: None)
    tiny = report["decode_region"]["tiny"]
    assert tiny["asked"] == "auto" and tiny["box_latent"] == [1, 5, 2, 6]  # the centred quarter, 6x8 latent
    assert tiny["decoded"].startswith("box 1:5,2:6 (auto: share 0.33") and tiny["predicted_speedup"] > 2.5
    assert report["config"]["decode_options"] == {"region": "auto", "margin": 0}
