"""Cost curves of the decoders: latency and peak memory against image size and batch, full against
tiled, the FLOP count beside each point; region decoding against mask area. Not a test.

    .venv/bin/python bench/decoder_scaling.py                    # ~12 min on 2 cores
    .venv/bin/python bench/decoder_scaling.py --budget-s 300     # fewer points

Writes bench/results/decoder_scaling.json and .png. Every point runs once (no repeats: the large
ones take minutes on this CPU); each preset runs in its own process with glibc's mmap threshold
at 64 KiB, so freed tensors leave the RSS and the peak of each point (VmHWM, reset per point,
minus the RSS before it) is that point's own. Points whose FLOPs predict more time than the budget
has left are skipped and listed; the FLOPs (torch.utils.flop_counter on the meta device, via
asymvq.profiling.flops) are counted for every planned size, measured or not, and the full decode's memory
beyond the measured sizes comes from a fitted line ``peak = a + b * pixels * batch``.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch
from bench_common import cpu_record, psnr
from region_common import centred_mask

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
GiB = 1024 ** 3
MACHINE_RAM = 24 * GiB

# Sizes (square, pixels) measured per preset, smallest first; every size of SIZES gets FLOPs.
SIZES = (256, 512, 768, 1024, 1536, 2048)
FULL_PLAN = {"tiny": SIZES, "vanilla": (256, 512), "base": (256, 512), "x1.5": (256, 512), "x2": (256,)}
FULL_LATE = {"vanilla": (768,), "base": (768,)}  # measured last, if the budget is left
BATCH_PLAN = {"tiny": (2, 4), "base": (2, 4)}  # at 256x256 (batch 1: the full point)
TILED_PLAN = {"tiny": ((256, 24), (320, 24))}  # (size, tile), measured: the same tile, 9 and 16 tiles
TILE_COUNT = {"vanilla": (1024, 64), "base": (1024, 64), "x1.5": (1024, 64), "x2": (1024, 64)}  # counted only
REGION = {"sizes": (512, 1024), "areas": (0.05, 0.2, 0.6), "margins": (0, 2, 4, 8)}
REGION_TINY = {"sizes": (512,), "areas": (0.05, 0.2, 0.6), "margins": (0, 2, 4, 8)}


def inputs(size: int, batch: int = 1, cond: bool = True, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    lat = torch.randn(batch, 4, size // 8, size // 8, generator=g)
    if not cond:
        return lat, None, None
    img = torch.rand(1, 3, size, size, generator=g) * 2 - 1
    mask = torch.zeros(1, 1, size, size)
    # a hole off the tile grid: its edges cross tile boundaries
    mask[..., size // 5: size * 3 // 4, size // 3: size * 4 // 5] = 1
    return lat, img, mask


# -- one preset, in its own process ------------------------------------------------------------------
def worker(preset: str, budget_s: float, rate: float) -> dict:
    from asymvq.models.config import preset_config
    from asymvq.models.decoder import AsymmetricDecoder
    from asymvq.models.sources import random_decoder
    from asymvq.models.tiled_decode import DEFAULT_MARGIN, check_tiling, mask_box, receptive_halo
    from asymvq.profiling.flops import count
    from asymvq.profiling.timing import PeakMemory

    t_start = time.perf_counter()
    torch.manual_seed(0)
    with torch.device("meta"):
        meta = AsymmetricDecoder(preset_config(preset)).eval()
    dec = random_decoder(preset).eval()
    cond = dec.config.has_condition
    mem = PeakMemory("cpu")
    out = {"preset": preset, "full": [], "batch": [], "tiled": [], "region": [], "skipped": [],
           "receptive_halo": receptive_halo(dec.config), "weights_bytes": sum(p.numel() * 4 for p in dec.parameters())}

    def flops_of(fn, *args, **kw):
        return count(fn, *args, **kw)["flops"]

    def meta_inputs(size, batch=1):
        with torch.device("meta"):
            lat = torch.empty(batch, 4, size // 8, size // 8)
            return (lat, torch.empty(1, 3, size, size), torch.empty(1, 1, size, size)) if cond else (lat, None, None)

    def left():
        return budget_s - (time.perf_counter() - t_start)

    def timed(fn):
        nonlocal rate
        mem.reset()
        t0 = time.perf_counter()
        with torch.inference_mode():
            y = fn()
        dt = time.perf_counter() - t0
        m = mem.measure()
        return y, dt, m

    def fits(flops, what):
        need = flops / rate
        if need > left():
            out["skipped"].append({"what": what, "predicted_s": round(need, 1), "budget_left_s": round(left(), 1)})
            return False
        return True

    torch.set_num_threads(os.cpu_count() or 1)
    # full decode over sizes (FLOPs for every size)
    for size in SIZES:
        f = flops_of(meta.decode_core, *meta_inputs(size))
        point = {"size": size, "batch": 1, "flops": f, "measured": False}
        if size in FULL_PLAN.get(preset, ()) and fits(f, f"full {size}"):
            lat, img, mask = inputs(size, cond=cond)
            _, dt, m = timed(lambda lat=lat, img=img, mask=mask: dec.decode_core(lat, img, mask))
            rate = f / dt
            point.update(measured=True, seconds=dt, peak_rss_added_bytes=m["added_bytes"], gflops_per_s=f / dt / 1e9)
        out["full"].append(point)
        print(preset, "full", point, flush=True)

    # tiled: measured on the plan, counted for the real presets at a realistic tile
    from asymvq.models.tiled_decode import tiled_decode

    plan = TILED_PLAN.get(preset) or [TILE_COUNT[preset]]
    for size, tile in plan:
        tile, overlap = check_tiling(tile, None, dec.config)
        f = flops_of(tiled_decode, meta, *meta_inputs(size), tile, overlap)
        full_f = flops_of(meta.decode_core, *meta_inputs(size))
        point = {"size": size, "tile": tile, "overlap": overlap, "flops": f, "flops_vs_full": f / full_f,
                 "measured": False}
        if preset in TILED_PLAN and fits(f + full_f, f"tiled {size}"):
            lat, img, mask = inputs(size, cond=cond)
            full, dtf, mf = timed(lambda lat=lat, img=img, mask=mask: dec.decode_core(lat, img, mask))
            y, dt, m = timed(lambda lat=lat, img=img, mask=mask, t=tile, o=overlap: dec(lat, img, mask, tile=t, overlap=o))
            point.update(measured=True, seconds=dt, full_seconds=dtf, peak_rss_added_bytes=m["added_bytes"],
                         full_peak_rss_added_bytes=mf["added_bytes"], psnr_db=psnr(y, full, 2.0),
                         max_abs=float((y - full).abs().max()))
            if cond and fits(f, f"tiled {size} no mask"):
                with torch.inference_mode():
                    y2 = dec(lat, tile=tile, overlap=overlap)
                    point["psnr_db_no_mask"] = psnr(y2, dec.decode_core(lat, None, None), 2.0)
        out["tiled"].append(point)
        print(preset, "tiled", point, flush=True)

    # region decoding against mask area
    spec = {"base": REGION, "tiny": REGION_TINY}.get(preset)
    if spec and cond:
        for size in spec["sizes"]:
            lat, img, _ = inputs(size)
            full_f = next(p["flops"] for p in out["full"] if p["size"] == size)
            for area in spec["areas"]:
                mask = centred_mask(size, area)
                full_y = None
                for margin in (spec["margins"] if area == 0.2 else (DEFAULT_MARGIN,)):
                    y0, y1, x0, x1 = mask_box(mask, margin, size // 8, size // 8)
                    with torch.device("meta"):
                        bl = torch.empty(1, 4, y1 - y0, x1 - x0)
                        bi, bm = torch.empty(1, 3, 8 * (y1 - y0), 8 * (x1 - x0)), torch.empty(1, 1, 8 * (y1 - y0), 8 * (x1 - x0))
                    f = flops_of(meta.decode_core, bl, bi, bm)
                    point = {"size": size, "mask_area": area, "margin": margin, "box_latent": [y0, y1, x0, x1],
                             "box_area": (y1 - y0) * (x1 - x0) * 64 / size ** 2, "flops": f,
                             "flops_speedup": full_f / f, "measured": False}
                    if full_y is None and fits(full_f + f, f"region full {size} {area}"):
                        full_y, full_t, _ = timed(lambda lat=lat, img=img, mask=mask: dec.decode_core(lat, img, mask))
                    if full_y is not None and fits(f, f"region {size} {area} m{margin}"):
                        y, dt, m = timed(lambda lat=lat, img=img, mask=mask, k=margin: dec(lat, img, mask, region="mask", margin=k))
                        box = (slice(None), slice(None), slice(8 * y0, 8 * y1), slice(8 * x0, 8 * x1))
                        hole = mask.expand_as(y) > 0.5
                        outside = _box_mask(y, box)
                        point.update(measured=True, seconds=dt, full_seconds=full_t, speedup=full_t / dt,
                                     peak_rss_added_bytes=m["added_bytes"],
                                     psnr_box_db=psnr(y[box], full_y[box], 2.0),
                                     psnr_hole_db=psnr(y[hole], full_y[hole], 2.0),
                                     max_abs_hole=float((y - full_y).abs()[hole].max()),
                                     outside_box_max_abs_vs_source=float((y - img.expand_as(y)).abs()[outside].max()),
                                     seam=seam(y, full_y, img, box))
                    out["region"].append(point)
                    print(preset, "region", point, flush=True)

    # batch at 256
    for batch in BATCH_PLAN.get(preset, ()):
        f = flops_of(meta.decode_core, *meta_inputs(256, batch))
        point = {"size": 256, "batch": batch, "flops": f, "measured": False}
        if fits(f, f"batch {batch}"):
            lat, img, mask = inputs(256, batch, cond=cond)
            _, dt, m = timed(lambda lat=lat, img=img, mask=mask: dec.decode_core(lat, img, mask))
            point.update(measured=True, seconds=dt, peak_rss_added_bytes=m["added_bytes"])
        out["batch"].append(point)
        print(preset, "batch", point, flush=True)

    for point in out["full"]:
        if point["size"] in FULL_LATE.get(preset, ()) and fits(point["flops"], f"full {point['size']}"):
            lat, img, mask = inputs(point["size"], cond=cond)
            _, dt, m = timed(lambda lat=lat, img=img, mask=mask: dec.decode_core(lat, img, mask))
            point.update(measured=True, seconds=dt, peak_rss_added_bytes=m["added_bytes"],
                         gflops_per_s=point["flops"] / dt / 1e9)
            print(preset, "full", point, flush=True)
    out["seconds"] = time.perf_counter() - t_start
    out["rate_flops_per_s"] = rate
    return out


def _box_mask(y, box):
    m = torch.ones_like(y, dtype=torch.bool)
    m[box] = False
    return m


def seam(y, full, source, box) -> dict:
    """Max abs difference between the pixel rows/columns just inside and just outside the box border
    (where the box is not on the image border): in the region output, in the full decode and in the
    source; and the full decode's own distance to the source on the border ring."""
    _, _, ys, xs = box
    H, W = y.shape[-2:]
    pairs = []
    if ys.start > 0:
        pairs.append((lambda t: t[..., ys.start, xs], lambda t: t[..., ys.start - 1, xs]))
    if ys.stop < H:
        pairs.append((lambda t: t[..., ys.stop - 1, xs], lambda t: t[..., ys.stop, xs]))
    if xs.start > 0:
        pairs.append((lambda t: t[..., ys, xs.start], lambda t: t[..., ys, xs.start - 1]))
    if xs.stop < W:
        pairs.append((lambda t: t[..., ys, xs.stop - 1], lambda t: t[..., ys, xs.stop]))
    if not pairs:
        return {}
    src = source.expand_as(y)
    jump = lambda t: max(float((a(t) - b(t)).abs().max()) for a, b in pairs)  # noqa: E731
    return {"region_output": jump(y), "full_decode": jump(full), "source": jump(src),
            "full_vs_source_on_border": max(float((a(full) - a(src)).abs().max()) for a, _ in pairs)}


# -- driver ----------------------------------------------------------------------------------------
def fit_exponent(points) -> float | None:
    pts = [(p["size"] ** 2, p["seconds"]) for p in points if p.get("measured")]
    if len(pts) < 2:
        return None
    xs = [math.log(a) for a, _ in pts]
    ys = [math.log(b) for _, b in pts]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)


def memory_line(points):
    """Least squares peak = a + b * pixels over measured full points (b: bytes per image pixel)."""
    pts = [(p["size"] ** 2 * p["batch"], p["peak_rss_added_bytes"]) for p in points if p.get("measured")]
    if len(pts) < 2:
        return None
    n = len(pts)
    mx = sum(x for x, _ in pts) / n
    my = sum(y for _, y in pts) / n
    b = sum((x - mx) * (y - my) for x, y in pts) / sum((x - mx) ** 2 for x, _ in pts)
    return {"a_bytes": my - b * mx, "b_bytes_per_pixel": b}


def summarise(res: dict) -> dict:
    for p in res["presets"]:
        full = p["full"]
        p["latency_exponent_vs_pixels"] = fit_exponent(full)
        fl = [(q["size"] ** 2, q["flops"]) for q in full]
        p["flops_exponent_vs_pixels_256_to_2048"] = math.log(fl[-1][1] / fl[0][1]) / math.log(fl[-1][0] / fl[0][0])
        line = memory_line(full + [q for q in p["batch"] if q.get("measured")])
        p["memory_line"] = line
        rate = p["rate_flops_per_s"]
        for q in full:
            if not q.get("measured"):
                q["predicted_seconds"] = q["flops"] / rate
                if line:
                    q["predicted_peak_bytes"] = line["a_bytes"] + line["b_bytes_per_pixel"] * q["size"] ** 2
        if line and line["b_bytes_per_pixel"] > 0:
            room = MACHINE_RAM - p["weights_bytes"] - max(line["a_bytes"], 0)
            p["full_decode_fits_24GiB_up_to_pixels"] = room / line["b_bytes_per_pixel"]
            p["full_decode_fits_24GiB_up_to_square"] = int(math.sqrt(room / line["b_bytes_per_pixel"]))
    return res


def plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 5))
    for i, p in enumerate(res["presets"]):
        c = f"C{i}"
        full = p["full"]
        m = [q for q in full if q.get("measured")]
        e = [q for q in full if not q.get("measured") and "predicted_seconds" in q]
        ax1.loglog([q["size"] ** 2 for q in m], [q["seconds"] for q in m], "o-", color=c, label=f"{p['preset']} full")
        if e:
            pts = ([m[-1]] if m else []) + e
            ax1.loglog([q["size"] ** 2 for q in pts],
                       [q.get("seconds") or q["predicted_seconds"] for q in pts], "--", color=c, alpha=0.5)
        t = [q for q in p["tiled"] if q.get("measured")]
        if t:
            ax1.loglog([q["size"] ** 2 for q in t], [q["seconds"] for q in t], "s:", color=c, label=f"{p['preset']} tiled")
            ax2.loglog([q["size"] ** 2 for q in t], [q["peak_rss_added_bytes"] / GiB for q in t], "s:", color=c,
                       label=f"{p['preset']} tiled")
        ax2.loglog([q["size"] ** 2 for q in m], [q["peak_rss_added_bytes"] / GiB for q in m], "o-", color=c,
                   label=f"{p['preset']} full")
        pe = [q for q in full if "predicted_peak_bytes" in q]
        if pe and m:
            ax2.loglog([q["size"] ** 2 for q in [m[-1]] + pe],
                       [(q.get("peak_rss_added_bytes") or q["predicted_peak_bytes"]) / GiB for q in [m[-1]] + pe], "--",
                       color=c, alpha=0.5)
    ax2.axhline(24, color="k", lw=0.8)
    ax1.set(xlabel="image pixels (batch 1)", ylabel="decode latency, s", title="latency (dashed: FLOPs / measured rate)")
    ax2.set(xlabel="image pixels (batch 1)", ylabel="peak RSS added, GiB", title="peak memory (dashed: fitted line); 24 GiB")
    for ax in (ax1, ax2):
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(res["machine"]["summary"], fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", default="tiny,vanilla,base,x1.5,x2")
    ap.add_argument("--budget-s", type=float, default=720.0, help="Total seconds for all presets.")
    ap.add_argument("--out", type=Path, default=RESULTS / "decoder_scaling.json")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--worker-budget", type=float, default=0.0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        res = worker(args.worker, args.worker_budget, rate=60e9)
        print("RESULT " + json.dumps(res), flush=True)
        return

    presets = [p.strip() for p in args.presets.split(",") if p.strip()]
    # the budget split: tiny a little, the rest by their planned work
    share = {"tiny": 0.3, "vanilla": 0.1, "base": 0.35, "x1.5": 0.13, "x2": 0.12}
    total = sum(share.get(p, 0.1) for p in presets)
    t0 = time.perf_counter()
    load0 = os.getloadavg()
    res = {"presets": [], "budget_s": args.budget_s}
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", PYTHONUNBUFFERED="1")
    for p in presets:
        left = args.budget_s - (time.perf_counter() - t0)
        budget = min(left, args.budget_s * share.get(p, 0.1) / total + max(0.0, left - args.budget_s * sum(
            share.get(q, 0.1) for q in presets[presets.index(p):]) / total))
        proc = subprocess.run([sys.executable, __file__, "--worker", p, "--worker-budget", str(budget)],
                              env=env, capture_output=True, text=True, cwd=ROOT)
        sys.stderr.write(proc.stderr[-2000:])
        line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
        if line is None:
            print(proc.stdout[-3000:])
            raise SystemExit(f"worker {p} failed")
        res["presets"].append(json.loads(line[7:]))
        print(f"{p}: done in {res['presets'][-1]['seconds']:.0f} s", flush=True)
    load1 = os.getloadavg()
    res["machine"] = {
        "cpu": platform.processor() or platform.machine(), "cpu_features": cpu_record(), "cores": os.cpu_count(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(), "loadavg_start": load0, "loadavg_end": load1,
        "summary": f"{os.cpu_count()} cores, torch {torch.__version__}, fp32, load average {load0[0]:.1f} -> {load1[0]:.1f}",
    }
    res["seconds"] = time.perf_counter() - t0
    summarise(res)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=1))
    plot(res, args.out.with_suffix(".png"))
    print(f"wrote {args.out} and {args.out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
