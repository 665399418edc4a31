"""Does int8 (NNCF post-training quantization of the OpenVINO IR) keep the decoder's image? A probe.

The decoder is exported as asymvq exports it (seeded random weights, preset and size fixed: static
shapes), its IR quantized with NNCF (OpenVINO's own quantization tool) calibrated on the decoder's
own activations from seeded latents, images and box masks, then compared with the fp32 IR on held-out
inputs: PSNR of the images in [-1, 1] (peak-to-peak 2), the worst of the test inputs, and one timed
call each (a probe, not a benchmark: run bench/decoder_cpu.py for speed). Variants: NNCF's MIXED and
PERFORMANCE presets, MIXED with the attention MatMuls left in float, and (``--accuracy-control``)
``quantize_with_accuracy_control``, which returns quantized ops to float, most harmful first, until
the PSNR bound holds or nothing is left to revert.

asymvq ships an int8 precision only where it holds >= 40 dB on what can be run here. Needs
``pip install nncf==3.4.0`` (not an asymvq extra). Writes bench/results/decoder_int8_probe_<preset>_<size>.json.

    .venv/bin/python bench/decoder_int8_probe.py --preset base --size 128 [--accuracy-control]
"""
from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from bench_common import cpu_record, loadavg

from asymvq.export import Source, export_directory
from asymvq.export.specs import Shapes
from asymvq.models import preset_config

RESULTS = Path(__file__).parent / "results"
FLOOR_DB = 40.0


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    return 10 * math.log10(4 / max(float(np.mean((a - b) ** 2)), 1e-30))


def sample(seed: int, channels: int, size: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    lat = torch.randn(1, channels, size // 8, size // 8, generator=g)
    img = torch.rand(1, 3, size, size, generator=g) * 2 - 1
    mask = torch.zeros(1, 1, size, size)
    y0 = int(torch.randint(0, size // 2, (1,), generator=g))
    mask[..., y0:y0 + size // 2, size // 4: 3 * size // 4] = 1
    return {"latent": lat.numpy(), "image": img.numpy(), "mask": mask.numpy()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="base")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--calibration", type=int, default=16)
    ap.add_argument("--accuracy-control", action="store_true")
    args = ap.parse_args()
    import nncf  # not an asymvq extra: this probe's own requirement
    import openvino as ov

    load_before = loadavg()
    out = Path(tempfile.mkdtemp(prefix="int8-probe-"))
    s = args.size
    export_directory(out, "decoder", Source(decoder=args.preset), shapes=Shapes((1, 1, 1), (s,) * 3, (s,) * 3),
                     formats=("openvino",))
    core = ov.Core()
    model = core.read_model(str(out / "decoder.xml"))
    channels = preset_config(args.preset).latent_channels
    calib = [sample(i, channels, s) for i in range(args.calibration)]
    test = [sample(1000 + i, channels, s) for i in range(3)]
    f32 = {"INFERENCE_PRECISION_HINT": "f32"}
    ref_model = core.compile_model(model, "CPU", f32)
    refs = [ref_model(t)[0] for t in test]

    def measure(compiled) -> dict:
        outs = [compiled(t)[0] for t in test]
        t0 = time.perf_counter()
        compiled(test[0])
        return {"psnr_db_min": min(psnr(o, r) for o, r in zip(outs, refs)), "one_call_s": time.perf_counter() - t0}

    rows = {"fp32": measure(ref_model)}
    data = nncf.Dataset(calib)
    variants = {
        "int8 MIXED": dict(preset=nncf.QuantizationPreset.MIXED),
        "int8 PERFORMANCE": dict(preset=nncf.QuantizationPreset.PERFORMANCE),
        "int8 MIXED, attention in float": dict(preset=nncf.QuantizationPreset.MIXED,
                                               ignored_scope=nncf.IgnoredScope(types=["MatMul"], validate=False)),
    }
    for name, kw in variants.items():
        q = nncf.quantize(model.clone(), data, subset_size=len(calib), **kw)
        rows[name] = measure(core.compile_model(q, "CPU", f32))
        print(name, rows[name], flush=True)
    if args.accuracy_control:
        def validate(compiled, items):  # higher is better: PSNR / 60, capped (the fp32 model itself is inf)
            return min(min(psnr(compiled(d)[0], r), 60.0) for d, r in zip(items, refs)) / 60.0

        q = nncf.quantize_with_accuracy_control(model.clone(), data, nncf.Dataset(test), validate,
                                                max_drop=(60.0 - FLOOR_DB) / 60.0, drop_type=nncf.DropType.ABSOLUTE,
                                                preset=nncf.QuantizationPreset.MIXED, subset_size=len(calib))
        rows["int8 accuracy control"] = measure(core.compile_model(q, "CPU", f32))
    result = {"what": f"{args.preset} decoder, {s}x{s}, OpenVINO IR fp32 vs NNCF int8", "machine": cpu_record(),
              "load_average_1_5_15": {"before": load_before, "after": loadavg()}, "floor_db": FLOOR_DB,
              "variants": rows, "ships": [n for n, r in rows.items() if n != "fp32" and r["psnr_db_min"] >= FLOOR_DB]}
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"decoder_int8_probe_{args.preset}_{s}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
