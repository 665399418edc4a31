"""The x1.5 asymmetric decoder on this CPU: ONNX Runtime engine vs diffusers eager vs our torch eager.

One process, the same seeded weights and inputs for all three (diffusers' AsymmetricAutoencoderKL
is the source; ours loads its state dict; the ONNX file is exported from ours), backends
interleaved round-robin so that drift of a shared machine hits them alike. Prints min and
median after warm-up and the ratios (ours / peer), and writes bench/results/decoder_cpu.json.

    .venv/bin/python bench/decoder_cpu.py [--preset x1.5] [--size 256] [--batch 1] [--repeats 5]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results" / "decoder_cpu.json"


def diffusers_decoder(preset: str, seed: int):
    """diffusers AsymmetricAutoencoderKL with the preset's decoder (encoder minimal: decode never uses it)."""
    from diffusers import AsymmetricAutoencoderKL

    from asymvq.models import preset_config

    cfg = preset_config(preset)
    torch.manual_seed(seed)
    return AsymmetricAutoencoderKL(
        down_block_types=["DownEncoderBlock2D"] * 4, layers_per_down_block=1,
        down_block_out_channels=[cfg.norm_num_groups] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
        up_block_out_channels=list(cfg.block_out_channels), layers_per_up_block=cfg.layers_per_block,
        norm_num_groups=cfg.norm_num_groups,
    ).eval()


def our_decoder(preset: str, reference) -> torch.nn.Module:
    from asymvq.models import AsymmetricDecoder
    from asymvq.models.checkpoints import convert_diffusers_state_dict, load_state_dict_strict

    decoder = AsymmetricDecoder(preset).eval()
    load_state_dict_strict(decoder, convert_diffusers_state_dict(reference.state_dict()), "diffusers")
    return decoder


def onnx_engine(decoder, out_dir: Path):
    from asymvq.engines.onnxruntime_engine import OnnxRuntimeEngine
    from asymvq.export import DEFAULT_SHAPES, export_onnx, io_specs
    from asymvq.models.component_modules import DecoderComponent

    module = DecoderComponent(decoder)
    shapes = DEFAULT_SHAPES["sd15"]  # the default dynamic ranges a user's export gets (256..1024)
    inputs, outputs = io_specs("decoder", module, shapes, "fp32")
    path = export_onnx(module, inputs, outputs, out_dir / "decoder.onnx")[0]
    return OnnxRuntimeEngine("decoder", path, inputs, outputs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="x1.5")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()

    reference = diffusers_decoder(args.preset, args.seed)
    ours = our_decoder(args.preset, reference)
    g = torch.Generator().manual_seed(args.seed + 1)
    b, s = args.batch, args.size
    latent = torch.randn(b, 4, s // 8, s // 8, generator=g)
    image = torch.rand(b, 3, s, s, generator=g) * 2 - 1
    mask = (torch.rand(b, 1, s, s, generator=g) > 0.5).float()
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        engine = onnx_engine(ours, Path(tmp))
        export_s = time.perf_counter() - t0

        runs = {
            "onnxruntime": lambda: engine(latent=latent, image=image, mask=mask)["sample"],
            "diffusers eager": lambda: reference.decode(latent, image=image, mask=mask).sample,
            "asymvq torch eager": lambda: ours(latent, image, mask),
        }
        with torch.inference_mode():
            outputs = {name: fn() for name, fn in runs.items()}  # also the first warm-up
            for _ in range(args.warmup - 1):
                for fn in runs.values():
                    fn()
            times: dict[str, list[float]] = {name: [] for name in runs}
            for _ in range(args.repeats):
                for name, fn in runs.items():
                    t = time.perf_counter()
                    fn()
                    times[name].append(time.perf_counter() - t)
    ref = outputs["diffusers eager"]
    result = {
        "what": f"{args.preset} decoder, {s}x{s}, batch {b}, with image+mask, fp32, CPU",
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "torch_threads": torch.get_num_threads(), "python": platform.python_version(),
                    "load_average_1_5_15": os.getloadavg()},  # other work on a shared machine
        "versions": {m: __import__(m).__version__ for m in ("torch", "onnxruntime", "diffusers")},
        "warmup": args.warmup, "repeats": args.repeats, "onnx_export_s": round(export_s, 1),
        "seconds": {n: {"min": min(v), "median": statistics.median(v), "all": v} for n, v in times.items()},
        "max_abs_diff_vs_diffusers": {n: float((o - ref).abs().max()) for n, o in outputs.items()},
    }
    med = {n: r["median"] for n, r in result["seconds"].items()}
    mn = {n: r["min"] for n, r in result["seconds"].items()}
    result["ratios"] = {
        f"onnxruntime / {peer}": {"min": mn["onnxruntime"] / mn[peer], "median": med["onnxruntime"] / med[peer]}
        for peer in ("diffusers eager", "asymvq torch eager")
    }
    result["ratios"]["asymvq torch eager / diffusers eager"] = {
        "min": mn["asymvq torch eager"] / mn["diffusers eager"], "median": med["asymvq torch eager"] / med["diffusers eager"]}
    print(result["what"], f"({args.warmup} warm-up, {args.repeats} measured, interleaved)")
    print(f"{'backend':<22}{'min s':>10}{'median s':>10}{'max |diff| vs diffusers':>26}")
    for n in runs:
        print(f"{n:<22}{mn[n]:>10.3f}{med[n]:>10.3f}{result['max_abs_diff_vs_diffusers'][n]:>26.2e}")
    for k, v in result["ratios"].items():
        print(f"{k:<40} min {v['min']:.3f}  median {v['median']:.3f}  (< 1: faster)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
