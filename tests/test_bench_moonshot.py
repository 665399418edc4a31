"""bench/moonshot.py end to end on the tiny conditional decoder at 256x256 (the record is x1.5 at 512): every
row decodes, a region row's pixels outside the box are exactly the source, the fastest region row and the
target the CPU's kind sets are reported. Not a speed claim: the timings of a tiny decoder on a test machine."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))

pytest.importorskip("diffusers")
pytest.importorskip("openvino")


def test_moonshot_rows_are_exact_outside_the_box(tmp_path):
    import moonshot

    from asymvq.models.cpu_features import cpu_features

    out = tmp_path / "moon.json"
    moonshot.main(["--preset", "tiny", "--size", "256", "--warmup", "0", "--repeats", "1", "--out", str(out)])
    res = json.loads(out.read_text())
    rows = res["rows"]
    native = cpu_features().native_bf16
    want = {"diffusers eager fp32", "asymvq torch fp32 region", "onnxruntime fp32 region", "openvino fp32 region"}
    want |= {"asymvq torch bf16 region", "asymvq torch bf16 region lowres", "openvino bf16 region",
                                "openvino bf16 full"} if native else set()
    assert set(rows) == want and (not native or not res["skipped"])
    assert res["box_latent"] == [4, 28, 4, 28] and res["box_share"] == pytest.approx(24 * 24 / 32 ** 2)
    assert (res["preset"], res["size"], res["margin"], res["mask_share"]) == ("tiny", [256, 256], 4, 0.25)
    for name, row in rows.items():
        assert row["median_s"] > 0 and row["speedup_median"] > 0
        if "region" in name:
            assert row["max_abs_outside_box_vs_source"] == 0.0, name
            assert row["psnr_box_db_vs_own_full"] > 0 and row["psnr_hole_db_vs_own_full"] > 0
    assert res["fastest"] in rows and "region" in res["fastest"]
    assert res["target"]["speedup"] == (6.0 if native else 3.0) and isinstance(res["target"]["met"], bool)
    assert res["flops_box"] < res["flops_full"] and res["cpu"]["model"]
