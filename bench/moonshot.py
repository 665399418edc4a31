"""The moonshot row (issue 22 item 5): a conditional decoder on a 512x512 inpaint with a 25 % mask (a centred box of
half the width and half the height), asymvq's fastest backend + region decode against diffusers' full decode
(``AsymmetricAutoencoderKL.decode`` eager fp32, the same seeded weights), in one run.

Rows (interleaved round-robin, warm-up then repeats; min and median; ratio to the peer): asymvq torch fp32 / bf16
and the exported decoder on ONNX Runtime fp32 and OpenVINO fp32 / bf16, each with ``region="mask"`` (the box plus
the default margin through the same engine, ``asymvq.models.region``), and OpenVINO bf16 on the whole image for
reference, and torch bf16 with ``region_stats="lowres"`` (the box's GroupNorm statistics merged with a 1/4-resolution
estimate of the rest: docs/decoder.md). bf16 rows run only where the CPU computes bf16 natively
(``cpu_features().native_bf16``; a oneDNN ISA cap counts). The target printed and checked against the fastest
row: >= 6x on a bf16 CPU, >= 3x on one without.
Quality per row: max abs outside the box against the source image (must be 0: the source by construction), PSNR
inside the box and over the hole against the peer's full decode and against the same backend's full decode (the
region's error apart from the precision's). FLOPs of the full and the region decode (counted on the meta device).

An AVX2-only CPU's kernels on an AVX-512/AMX machine: ``ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2`` caps
torch's and OpenVINO's kernels (ONNX Runtime's MLAS ignores it: that row keeps AVX-512 and says so).

    .venv/bin/python bench/moonshot.py [--preset x1.5] [--size 512] [--warmup 1] [--repeats 3] [--threads 2] [--only ROWS]

The record, one command on a quiet machine (and the same under the cap above for the AVX2 row):

    .venv/bin/python bench/moonshot.py --preset x1.5 --size 512 --warmup 1 --repeats 3 --threads 2

Estimate on the 2-core Xeon (AMX), quiet: ~9 min, ~1 min more on the first run for the two exports (ONNX 49 s
and IR 6 s measured under load; cached under out/bench-cache/ afterwards). From a run of the same rows at 256
(``--preset x1.5 --size 256 --warmup 0 --repeats 1``: 3 min under load 3.9-4.4, 1 round 53 s, the own-full
decodes ~60 s) scaled by the counted FLOPs (512: full 8.12 TFLOP, box 3.16 TFLOP; 256: 2.02 / 1.14) at the
quiet throughput of decoder_cpu.json (fp32 ~210-240 GFLOP/s, bf16 ~850): a round ~100 s (the peer ~40 s, the
fp32 region rows 13-15 s, the bf16 ones 4-5 s, OpenVINO bf16 full ~10 s) x 4, then the fp32 and bf16 full
decodes each backend's quality needs once (~2 min). At 512 under load 5-6 (the bf16 region rows only) the peer
took 78 s and the bf16 region rows 7-9 s. Peak RSS: 4.6 GB at 512 with the exports cached, 9.5 GB on a first
run (the ONNX export's). Writes bench/results/moonshot_<preset>_<size>[_<cap>].json.
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch
from bench_common import add_cpu_comparison_args, cpu_record, interleaved, loadavg, psnr, versions
from decoder_cpu import PEER, _have_openvino, diffusers_decoder, exported, our_decoder

from asymvq.models.cpu_bf16 import to_cpu_bf16
from asymvq.models.cpu_features import cpu_features
from asymvq.models.region import DEFAULT_MARGIN, SCALE, mask_box
from asymvq.profiling.flops import count_decoder

HERE = Path(__file__).parent
TARGET = {True: 6.0, False: 3.0}  # native bf16 or not
# row -> (backend, precision) of the exported decoder it runs
ENGINE_ROWS = {"onnxruntime fp32 region": ("onnxruntime", "fp32"), "openvino fp32 region": ("openvino", "fp32"),
               "openvino bf16 region": ("openvino", "bf16"), "openvino bf16 full": ("openvino", "bf16")}


def box_mask(size: int) -> torch.Tensor:
    """A centred box of half the width and half the height: 25 % of the image."""
    m = torch.zeros(1, 1, size, size)
    m[..., size // 4: 3 * size // 4, size // 4: 3 * size // 4] = 1
    return m


def _engine(kind: tuple[str, str], files: tuple, threads: int):
    """The exported decoder (``files``: component, ONNX, IR, input and output specs) on ``kind``'s backend."""
    component, onnx, xml, inputs, outputs = files
    if kind[0] == "onnxruntime":
        from asymvq.engines.onnxruntime_engine import OnnxRuntimeEngine  # defers the onnxruntime extra

        return OnnxRuntimeEngine(component, onnx, inputs, outputs, threads=threads)
    from asymvq.engines.openvino_engine import OpenVINOEngine  # defers the openvino extra

    return OpenVINOEngine(component, xml, inputs, outputs, precision=kind[1], threads=threads, cache_dir=False)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_cpu_comparison_args(ap, None)
    ap.add_argument("--preset", default="x1.5")
    ap.add_argument("--only", default=None, help="comma list of rows (the peer always runs)")
    ap.set_defaults(size=512)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    s = args.size
    cpu = cpu_features()
    native = cpu.native_bf16
    load_before = loadavg()
    cap = cpu.isa_cap
    out = Path(args.out) if args.out else HERE / "results" / f"moonshot_{args.preset}_{s}{'_' + cap.lower() if cap else ''}.json"

    reference = diffusers_decoder(args.preset, args.seed)
    ours = our_decoder(args.preset, reference)
    if ours.condition_encoder is None:
        raise SystemExit(f"--preset: {args.preset} has no condition branch; the moonshot row is a conditional decoder's")
    g = torch.Generator().manual_seed(args.seed + 1)
    space = ours.config.latent_space
    h = s // SCALE
    latent = space.to_vae(torch.randn(1, space.channels, h, h, generator=g))
    image = torch.rand(1, 3, s, s, generator=g) * 2 - 1
    mask = box_mask(s)
    box = mask_box(mask, DEFAULT_MARGIN, h, h)
    region = {"region": "mask"}

    runs = {PEER: lambda: reference.decode(latent, image=image, mask=mask).sample}
    full = {}  # each backend's own full decode, for the region's error apart from the precision's
    want = (lambda n: not args.only or n in {x.strip() for x in args.only.split(",")})  # noqa: E731
    skipped = {}
    if want("asymvq torch fp32 region"):
        runs["asymvq torch fp32 region"] = lambda: ours(latent, image, mask, **region)
        full["asymvq torch fp32 region"] = lambda: ours(latent, image, mask)
    bf16_rows = ("asymvq torch bf16 region", "asymvq torch bf16 region lowres", "openvino bf16 region", "openvino bf16 full")
    torch_bf16 = {"asymvq torch bf16 region": {},  # and with image-wide GroupNorm statistics estimated:
                  "asymvq torch bf16 region lowres": {"region_stats": "lowres"}}
    if native and any(want(n) for n in torch_bf16):
        bf16, lat16 = to_cpu_bf16(our_decoder(args.preset, reference)), latent.bfloat16()
        bf16_full = lambda: bf16(lat16, image, mask)  # noqa: E731  (one function: both rows' reference, run once)
        for name, extra in torch_bf16.items():
            if want(name):
                runs[name] = lambda extra=extra: bf16(lat16, image, mask, **region, **extra)
                full[name] = bf16_full
    elif not native:
        skipped |= {n: f"no native bf16 on this CPU ({cpu.describe()})" for n in bf16_rows}
    openvino = _have_openvino()
    if not openvino:
        for n in ("openvino fp32 region", "openvino bf16 region", "openvino bf16 full"):
            skipped.setdefault(n, "openvino is not installed (the openvino extra)")
    engine_rows = [n for n in ENGINE_ROWS if want(n) and n not in skipped]
    export_s = {}
    if engine_rows:  # the export (cached) only where an engine row runs
        files = exported(ours, print, openvino)
        export_s = files[-1]
    # one engine and one full-decode function per backend and precision: the bf16 full row is the bf16 region
    # row's reference too
    engines = {}
    feeds = dict(latent=latent, image=image, mask=mask)
    for name in engine_rows:
        kind = ENGINE_ROWS[name]
        if kind not in engines:
            e = _engine(kind, files[:5], args.threads)
            engines[kind] = (e, lambda e=e: e(**feeds)["sample"])
        e, decode_all = engines[kind]
        if name.endswith("region"):
            runs[name] = lambda e=e: e.decode_with_modes(region, **feeds)["sample"]
            full[name] = decode_all
        else:
            runs[name] = decode_all

    times, outs = interleaved({n: (lambda f=f: f().float()) for n, f in runs.items()}, args.warmup, args.repeats, print)
    done = {f: outs[n] for n, f in runs.items() if f in full.values()}  # a full decode that is a row: its output
    with torch.inference_mode():  # each other full decode once, however many rows it is the reference of
        for f in full.values():
            if f not in done:
                done[f] = f().float()
    fulls = {n: done[f] for n, f in full.items()}
    y0, y1, x0, x1 = box
    inside = (slice(None), slice(None), slice(SCALE * y0, SCALE * y1), slice(SCALE * x0, SCALE * x1))
    outside = torch.ones_like(outs[PEER], dtype=torch.bool)
    outside[inside] = False
    hole = mask.expand_as(outs[PEER]) > 0.5
    peer = outs[PEER]
    med = {n: statistics.median(v) for n, v in times.items()}
    rows = {}
    for n, v in times.items():
        y = outs[n]
        row = {"min_s": min(v), "median_s": med[n], "n": len(v),
               "speedup_median": med[PEER] / med[n], "speedup_min": min(times[PEER]) / min(v)}
        if n != PEER:
            row |= {"psnr_box_db_vs_peer_full": psnr(y[inside], peer[inside], 2.0),
                    "psnr_hole_db_vs_peer_full": psnr(y[hole], peer[hole], 2.0)}
            if "region" in n:
                diff = (y - image).abs()[outside]  # empty where the box and its margin cover the image
                row |= {"max_abs_outside_box_vs_source": float(diff.max()) if diff.numel() else 0.0,
                        "psnr_box_db_vs_own_full": psnr(y[inside], fulls[n][inside], 2.0),
                        "psnr_hole_db_vs_own_full": psnr(y[hole], fulls[n][hole], 2.0)}
        if n.startswith("onnxruntime") and cap:
            row["note"] = f"ONNX Runtime's MLAS kernels ignore ONEDNN_MAX_CPU_ISA={cap}: this row keeps the CPU's own ISA"
        rows[n] = row
    candidates = [n for n in rows if "region" in n and not (cap and n.startswith("onnxruntime"))]
    fastest = max(candidates, key=lambda n: rows[n]["speedup_median"]) if candidates else None
    target = TARGET[native]
    met = fastest is not None and rows[fastest]["speedup_median"] >= target
    flops_full = int(count_decoder(args.preset, s, s, 1)["flops"])
    flops_box = int(count_decoder(args.preset, SCALE * (y1 - y0), SCALE * (x1 - x0), 1)["flops"])
    result = {
        "what": (f"{args.preset} decoder, {s}x{s}, 25 % mask (centred box of half width and height), region decode "
                 f"(margin {DEFAULT_MARGIN}) against diffusers AsymmetricAutoencoderKL.decode eager fp32 (full image)"),
        "cpu": cpu_record(), "cpu_line": cpu.describe(), "threads": args.threads,
        "load_average_1_5_15": {"before": load_before, "after": loadavg()},
        "versions": versions("torch", "openvino", "onnxruntime", "diffusers"),
        "preset": args.preset, "size": [s, s], "latent_size": [h, h], "seed": args.seed,
        "warmup": args.warmup, "repeats": args.repeats, "margin": DEFAULT_MARGIN,
        "mask_share": float(mask.mean()), "box_latent": list(box),
        "box_share": (y1 - y0) * (x1 - x0) / (h * h), "flops_full": flops_full, "flops_box": flops_box,
        "flops_ratio": flops_full / flops_box, "export_s": export_s,
        "rows": rows, "skipped": skipped, "fastest": fastest,
        "target": {"speedup": target, "kind": "bf16-native CPU" if native else "CPU without native bf16",
                   "met": met},
    }
    print(f"cpu: {cpu.describe()}; load average {load_before} -> {result['load_average_1_5_15']['after']}")
    print(f"{'row':<32} {'median s':>9} {'min s':>8} {'x median':>9} {'x min':>7} {'box dB':>7} {'outside':>8}")
    for n, r in rows.items():
        print(f"{n:<32} {r['median_s']:9.2f} {r['min_s']:8.2f} {r['speedup_median']:8.2f}x {r['speedup_min']:6.2f}x "
              f"{r.get('psnr_box_db_vs_peer_full', float('inf')):7.1f} {r.get('max_abs_outside_box_vs_source', 0):8.1g}")
    got = f"{fastest} {rows[fastest]['speedup_median']:.2f}x (median)" if fastest else "no region row ran"
    print(f"fastest: {got} against the {target}x target of a {result['target']['kind']}: {'met' if met else 'not met'}")
    for n, why in skipped.items():
        print(f"skipped {n}: {why}")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1, default=str) + "\n")
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()
