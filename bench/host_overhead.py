"""Per-step overhead of the C++ host's inpainting loop against the Python pipeline, same engines.

Both run the whole job on one AOTInductor engines directory: the C++ host through its C API
(ctypes, host/asymvq_host.py; one handle) and ``asymvq.InpaintPipeline.from_engines(DIR,
backend="aoti")``, same prompt embeddings, image, mask, seed and scheduler, interleaved,
after warm-up. Every call is split into
  engines    seconds inside the networks (C++: asymvq_inpaint_stats; Python: a timing proxy
             around each engine), the same compiled code on both sides
  host       total - engines: everything else (argument checks, concatenation, guidance mix,
             scheduler arithmetic, feed checks, pre/post-processing, Python/C++ dispatch)
and the per-step overhead is (host(steps=hi) - host(steps=lo)) / (hi - lo): host time is
measured within each call, so the load on a shared machine, which mostly slows the networks,
largely cancels. min and median over the repeats, and C++ / Python ratios. Not a timed test.

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
from asymvq.models.cpu_features import cpu_features

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
    # each engine's own time in Python (pipe.stages is internal: the bench needs it, the library does not)
    proxies = {name: TimedEngine(e) for name, e in pipe.stages.engines.items()}
    pipe.stages.engines.update(proxies)
    manifest = json.loads((engines / "manifest.json").read_text())
    dim = manifest["components"]["unet"]["inputs"][2]["opt"][2]
    x = _inputs(size, size, dim)

    def run_cpp(n):
        st = asymvq_host.Stats()
        t0 = time.perf_counter()
        out = host.inpaint(prompt_embeds=x["embeds"], negative_embeds=x["negative"], image=x["image"], mask=x["mask"],
                           steps=n, guidance_scale=7.5, seed=0, scheduler=scheduler, stats=st)
        total = time.perf_counter() - t0
        return total, st.text_encode_s + st.vae_encode_s + st.unet_s + st.decode_s, torch.from_numpy(out)

    def run_py(n):
        for p in proxies.values():
            p.seconds = 0.0
        t0 = time.perf_counter()
        d = pipe.denoise(prompt_embeds=x["embeds"], negative_prompt_embeds=x["negative"], image=x["image"],
                         mask_image=x["mask"], num_inference_steps=n, guidance_scale=7.5,
                         generator=torch.Generator().manual_seed(0), scheduler=scheduler)
        out = pipe.decode(d)
        total = time.perf_counter() - t0
        return total, sum(p.seconds for p in proxies.values()), out

    lo, hi = steps
    for _ in range(warmup):
        for n in (lo, hi):
            run_cpp(n)
            run_py(n)
    rec = {impl: {n: {"total": [], "engines": [], "host": []} for n in (lo, hi)} for impl in ("cpp", "python")}
    max_diff = 0.0
    for _ in range(repeats):  # interleaved, so load changes hit both alike
        for n in (lo, hi):
            for impl, fn in (("cpp", run_cpp), ("python", run_py)):
                total, eng, out = fn(n)
                r = rec[impl][n]
                r["total"].append(total)
                r["engines"].append(eng)
                r["host"].append(total - eng)
                if impl == "cpp":
                    ref = out
                else:
                    max_diff = max(max_diff, (ref - out).abs().max().item())
    host.close()

    result = {"label": label, "engines": str(engines), "size": size, "steps": [lo, hi], "scheduler": scheduler,
              "warmup": warmup, "repeats": repeats, "max_abs_diff_cpp_vs_python": max_diff, "raw": rec}
    for impl in ("cpp", "python"):
        r = rec[impl]
        result[impl] = {
            stat: {"call_s": f(r[hi]["total"]), "engines_s": f(r[hi]["engines"]), "host_call_s": f(r[hi]["host"]),
                   "host_per_step_s": (f(r[hi]["host"]) - f(r[lo]["host"])) / (hi - lo)}
            for stat, f in (("min", min), ("median", statistics.median))
        }
    result["ratio_cpp_over_python"] = {
        stat: {k: (result["cpp"][stat][k] / result["python"][stat][k]) if result["python"][stat][k] else None
               for k in ("call_s", "host_call_s", "host_per_step_s")}
        for stat in ("min", "median")
    }
    return result


def _print(r: dict) -> None:
    lo, hi = r["steps"]
    print(f"\n{r['label']}: {r['size']}x{r['size']}, {r['scheduler']}, steps {lo} vs {hi}, "
          f"{r['warmup']} warm-up, {r['repeats']} measured; C++ vs Python max abs diff {r['max_abs_diff_cpp_vs_python']:.2e}")
    print(f"{'':8} {'stat':6} {'call s (' + str(hi) + ' steps)':>18} {'engines s':>10} {'host s':>8} {'host ms/step':>13}")
    for impl in ("cpp", "python"):
        for stat in ("min", "median"):
            s = r[impl][stat]
            print(f"{impl:8} {stat:6} {s['call_s']:18.4f} {s['engines_s']:10.4f} {s['host_call_s']:8.4f} "
                  f"{1000 * s['host_per_step_s']:13.3f}")
    for stat in ("min", "median"):
        q = r["ratio_cpp_over_python"][stat]
        print(f"C++ / Python ({stat}): call {q['call_s']:.3f}, host per call {q['host_call_s']:.3f}, "
              f"host per step {q['host_per_step_s']:.3f}")


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
        "machine": {"cpu": platform.processor() or platform.machine(), "cpu_features": cpu_features().to_dict(),
                    "cores": os.cpu_count(),
                    "load_average_end": os.getloadavg(), "torch": torch.__version__, "python": platform.python_version()},
        "results": results,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
