"""Per-step overhead of the C++ host's inpainting loop against the Python pipeline, same engines.

Both run the whole job on one AOTInductor engines directory: the C++ host through its C API
(ctypes, host/asymvq_host.py; one handle) and ``asymvq.InpaintPipeline.from_engines(DIR,
backend="aoti")``, same prompt embeddings, image, mask, seed and scheduler, interleaved,
after warm-up. Per step:
  marginal   (T(steps=hi) - T(steps=lo)) / (hi - lo): what one more step costs, whole call timed
  unet       the UNet engine's own time per step, measured inside each implementation
             (C++: asymvq_inpaint_stats.unet_s; Python: a timing proxy around the UNet engine)
  overhead   marginal - unet: everything a step costs besides the network (concatenation,
             guidance mix, scheduler arithmetic, feed checks, Python/C++ dispatch)
min and median over the repeats, and C++ / Python ratios. Not a timed test.

    python bench/host_overhead.py                                   # tiny preset (exported if missing)
    python bench/host_overhead.py --sd15 out/engines/sd15-256-aoti  # + SD 1.5 shapes at 256x256, 2 steps
    # that directory: asymvq export --format aoti --preset sd15 --component unet,vae-encoder,decoder \
    #                   --shapes batch=1:1:1,height=256:256:256,width=256:256:256 --out out/engines/sd15-256-aoti
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

import asymvq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "host"))

import asymvq_host  # noqa: E402


class TimedEngine:
    """Proxy of an engine that adds up the seconds spent in its calls."""

    def __init__(self, engine):
        self.engine, self.seconds = engine, 0.0

    def __getattr__(self, name):
        return getattr(self.engine, name)

    def __call__(self, **feeds):
        t0 = time.perf_counter()
        out = self.engine(**feeds)
        self.seconds += time.perf_counter() - t0
        return out


def _inputs(h: int, w: int, dim: int):
    g = torch.Generator().manual_seed(0)
    return dict(
        embeds=torch.randn(1, 77, dim, generator=g), negative=torch.randn(1, 77, dim, generator=g),
        image=torch.rand(1, 3, h, w, generator=g) * 2 - 1,
        mask=(torch.arange(w).reshape(1, 1, 1, w).expand(1, 1, h, w) < w // 2).float(),  # left half: hole
    )


def bench(engines: Path, *, label: str, size: int, steps: tuple[int, int], warmup: int, repeats: int,
          scheduler: str) -> dict:
    lib = asymvq_host.load_library(ROOT / "build" / "host" / "libasymvq_host.so")
    host = asymvq_host.Host(lib, engines)
    pipe = asymvq.InpaintPipeline.from_engines(engines, backend="aoti")
    unet_proxy = None
    try:  # the UNet engine's own time in Python (internal attribute; the bench degrades without it)
        unet_proxy = TimedEngine(pipe.stages.engines["unet"])
        pipe.stages.engines["unet"] = unet_proxy
    except (AttributeError, KeyError, TypeError):
        unet_proxy = None
    manifest = json.loads((engines / "manifest.json").read_text())
    dim = manifest["components"]["unet"]["inputs"][2]["opt"][2]
    x = _inputs(size, size, dim)

    def run_cpp(n):
        st = asymvq_host.Stats()
        t0 = time.perf_counter()
        out = host.inpaint(prompt_embeds=x["embeds"], negative_embeds=x["negative"], image=x["image"], mask=x["mask"],
                           steps=n, guidance_scale=7.5, seed=0, scheduler=scheduler, stats=st)
        return time.perf_counter() - t0, st.unet_s, torch.from_numpy(out)

    def run_py(n):
        if unet_proxy is not None:
            unet_proxy.seconds = 0.0
        t0 = time.perf_counter()
        d = pipe.denoise(prompt_embeds=x["embeds"], negative_prompt_embeds=x["negative"], image=x["image"],
                         mask_image=x["mask"], num_inference_steps=n, guidance_scale=7.5,
                         generator=torch.Generator().manual_seed(0), scheduler=scheduler)
        out = pipe.decode(d)
        return time.perf_counter() - t0, (unet_proxy.seconds if unet_proxy else float("nan")), out

    lo, hi = steps
    for _ in range(warmup):
        for n in (lo, hi):
            run_cpp(n)
            run_py(n)
    rec = {impl: {n: {"total": [], "unet": []} for n in (lo, hi)} for impl in ("cpp", "python")}
    max_diff = 0.0
    for _ in range(repeats):  # interleaved, so load changes hit both alike
        for n in (lo, hi):
            tc, uc, oc = run_cpp(n)
            tp, up, op = run_py(n)
            rec["cpp"][n]["total"].append(tc)
            rec["cpp"][n]["unet"].append(uc)
            rec["python"][n]["total"].append(tp)
            rec["python"][n]["unet"].append(up)
            max_diff = max(max_diff, (oc - op).abs().max().item())
    host.close()

    result = {"label": label, "engines": str(engines), "size": size, "steps": [lo, hi], "scheduler": scheduler,
              "warmup": warmup, "repeats": repeats, "max_abs_diff_cpp_vs_python": max_diff, "raw": rec}
    for impl in ("cpp", "python"):
        r = rec[impl]
        summary = {}
        for stat, f in (("min", min), ("median", statistics.median)):
            marginal = (f(r[hi]["total"]) - f(r[lo]["total"])) / (hi - lo)
            unet = f([u / hi for u in r[hi]["unet"]])
            summary[stat] = {"call_s": f(r[hi]["total"]), "marginal_step_s": marginal, "unet_step_s": unet,
                             "overhead_step_s": marginal - unet}
        result[impl] = summary
    result["ratio_cpp_over_python"] = {
        stat: {k: (result["cpp"][stat][k] / result["python"][stat][k]) if result["python"][stat][k] else None
               for k in ("call_s", "marginal_step_s")}
        for stat in ("min", "median")
    }
    return result


def _print(r: dict) -> None:
    lo, hi = r["steps"]
    print(f"\n{r['label']}: {r['size']}x{r['size']}, {r['scheduler']}, steps {lo} vs {hi}, "
          f"{r['warmup']} warm-up, {r['repeats']} measured; C++ vs Python max abs diff {r['max_abs_diff_cpp_vs_python']:.2e}")
    print(f"{'':8} {'stat':6} {'call (' + str(hi) + ' steps) s':>18} {'per step s':>11} {'UNet/step s':>12} {'overhead/step ms':>17}")
    for impl in ("cpp", "python"):
        for stat in ("min", "median"):
            s = r[impl][stat]
            print(f"{impl:8} {stat:6} {s['call_s']:18.4f} {s['marginal_step_s']:11.4f} {s['unet_step_s']:12.4f} "
                  f"{1000 * s['overhead_step_s']:17.3f}")
    for stat in ("min", "median"):
        q = r["ratio_cpp_over_python"][stat]
        print(f"C++ / Python ({stat}): call {q['call_s']:.3f}, per step {q['marginal_step_s']:.3f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", type=Path, default=ROOT / "out" / "engines" / "tiny-aoti",
                    help="tiny AOTInductor engines (exported there when missing)")
    ap.add_argument("--sd15", type=Path, default=None, help="SD 1.5 AOTInductor engines at 256x256 (see above)")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--scheduler", default="ddim", choices=["ddim", "euler"])
    ap.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "host_overhead.json")
    args = ap.parse_args()

    if not (ROOT / "build" / "host" / "libasymvq_host.so").is_file():
        sys.exit("build the host first: make host")
    if not (args.tiny / "manifest.json").is_file():
        subprocess.run([sys.executable, "-m", "asymvq.cli", "export", "--format", "aoti", "--component", "all",
                        "--preset", "tiny", "--out", str(args.tiny)], check=True)
    results = [bench(args.tiny, label="tiny", size=64, steps=(2, 10), warmup=args.warmup, repeats=args.repeats,
                     scheduler=args.scheduler)]
    _print(results[-1])
    if args.sd15 is not None:
        results.append(bench(args.sd15, label="sd15", size=256, steps=(1, 2), warmup=args.warmup,
                             repeats=max(3, args.repeats // 2), scheduler=args.scheduler))
        _print(results[-1])
    report = {
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "load_average_end": os.getloadavg(), "torch": torch.__version__, "python": platform.python_version()},
        "results": results,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
