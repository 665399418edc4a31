"""Fused Triton kernels against the unfused PyTorch sequence (cuDNN) and torch.compile of it.

Shapes are the x1.5 decoder's (c = 192: condition branch c, 2c, 4c, 4c, 4c; levels 4c, 4c, 2c, c)
at 512x512 and 1024x1024, fp16, channels-last, batch 1; then the whole x1.5 decode with
kernels="triton" against kernels="torch". Timings: CUDA events around each call after warm-up,
one synchronisation per measurement; min / median / p90 in ms. Ratios are ours / peer
(< 1 means we are faster). GB/s counts each op's compulsory traffic (every input read once,
every output written once: what the fused kernel needs), the same bytes for every provider.

    python bench/kernels.py                      # GPU: prints a table, writes bench/results/*.json
    python bench/kernels.py --sizes 512 --repeats 20
    python bench/kernels.py --interpret          # CPU: correctness smoke run, tiny shapes, no timings
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

from bench_common import time_ms, versions

C_X15 = 192  # x1.5 preset width


def _args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[512, 1024], help="image sides in pixels")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--repeats", type=int, default=50)
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile peer")
    p.add_argument("--no-decode", action="store_true", help="skip the whole-decoder comparison")
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    p.add_argument("--interpret", action="store_true",
                   help="run every case once on the CPU through Triton's interpreter and check it (no timings)")
    return p.parse_args()


def _cases(size, c, dtype, device):
    """(name, fn, peer, args, kwargs, flops) at one image size. ``peer`` is the reference sequence."""
    import torch

    from asymvq.kernels import (
        blend,
        blend_reference,
        conv2d_fused,
        conv2d_fused_reference,
        group_norm_silu,
        group_norm_silu_reference,
    )

    g = torch.Generator(device=device).manual_seed(0)
    cl = torch.channels_last

    def act(ch, side):
        return torch.randn(1, ch, side, side, generator=g, device=device, dtype=dtype).contiguous(memory_format=cl)

    def conv_params(cout, cin, k):
        w = torch.randn(cout, cin, k, k, generator=g, device=device, dtype=dtype) / (cin * k * k) ** 0.5
        return w.contiguous(memory_format=cl), torch.randn(cout, generator=g, device=device, dtype=dtype) * 0.1

    def conv_flops(cout, cin, k, side_out):
        return 2 * side_out * side_out * cout * cin * k * k

    s = size
    mask = (torch.rand(1, 1, s, s, generator=g, device=device) > 0.5).to(dtype)
    image = act(3, s).clamp_(-1, 1)
    out = []

    def conv_case(name, x, cout, k, stride, side_out, **kw):
        w, b = conv_params(cout, x.shape[1], k)
        out.append((name, conv2d_fused, conv2d_fused_reference, (x, w, b),
                    dict(stride=stride, padding=1, **kw), conv_flops(cout, x.shape[1], k, side_out)))

    conv_case(f"cond L0 3x3 3->{c} @{s} mask-on-load+relu", image, c, 3, 1, s,
              in_mask=mask, in_mask_is_hole=True, relu_out=True)
    conv_case(f"cond L1 3x3 {c}->{2*c} @{s} +relu", act(c, s), 2 * c, 3, 1, s, relu_out=True)
    conv_case(f"cond L2 4x4s2 {2*c}->{4*c} @{s//2} +relu", act(2 * c, s), 4 * c, 4, 2, s // 2, relu_out=True)
    conv_case(f"cond L2 partial 4x4s2 {2*c}->{4*c} @{s//2}", act(2 * c, s), 4 * c, 4, 2, s // 2,
              in_mask=1 - mask, partial=True, relu_out=True)
    conv_case(f"cond L3 4x4s2 {4*c}->{4*c} @{s//4} +relu", act(4 * c, s // 2), 4 * c, 4, 2, s // 4, relu_out=True)
    conv_case(f"cond L4 4x4s2 {4*c}->{4*c} @{s//8} +blend", act(4 * c, s // 4), 4 * c, 4, 2, s // 8,
              blend_with=act(4 * c, s // 8), blend_mask=mask)
    conv_case(f"decoder conv 3x3 {c}->{c} @{s} (no fusion)", act(c, s), c, 3, 1, s)
    out.append((f"blend {4*c} @{s//2}", blend, blend_reference, (act(4 * c, s // 2), act(4 * c, s // 2), mask), {}, 0))
    w, b = (torch.randn(c, generator=g, device=device, dtype=dtype) for _ in range(2))
    groups = 32 if c % 32 == 0 else 8  # the decoder's 32; the tiny smoke width needs fewer
    out.append((f"groupnorm+silu {c} @{s}", group_norm_silu, group_norm_silu_reference, (act(c, s), w, b, groups), {}, 0))
    out.append((f"blend+groupnorm+silu {c} @{s}", group_norm_silu, group_norm_silu_reference,
                (act(c, s), w, b, groups), dict(blend_with=act(c, s), blend_mask=mask), 0))
    return out


def _outputs(r):
    import torch

    items = r if isinstance(r, tuple) else (r,)
    return [t for t in items if isinstance(t, torch.Tensor)]


def _nbytes(args, kwargs, outputs):
    import torch

    ts = [t for t in (*args, *kwargs.values(), *outputs) if isinstance(t, torch.Tensor)]
    return sum(t.numel() * t.element_size() for t in ts)


def _max_err(a, b):
    return max((x.float() - y.float()).abs().max().item() for x, y in zip(_outputs(a), _outputs(b)))


def _environment():
    import torch

    try:
        driver = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                capture_output=True, text=True, timeout=10).stdout.strip().splitlines()[0]
    except (OSError, IndexError, subprocess.SubprocessError):
        driver = "unknown"
    return {
        "device": torch.cuda.get_device_name(0), "driver": driver, "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(), **versions("torch", "triton"),
        "python": platform.python_version(), "date": datetime.datetime.now(datetime.timezone.utc).isoformat(),
    }


def _decoder(preset, dtype, device):
    import torch

    from asymvq.models import AsymmetricDecoder

    torch.manual_seed(0)
    return AsymmetricDecoder(preset).eval().to(device=device, dtype=dtype).to(memory_format=torch.channels_last)


def _decode_inputs(size, dtype, device):
    import torch

    g = torch.Generator(device=device).manual_seed(1)
    latents = torch.randn(1, 4, size // 8, size // 8, generator=g, device=device, dtype=dtype)
    image = (torch.rand(1, 3, size, size, generator=g, device=device, dtype=dtype) * 2 - 1)
    mask = (torch.rand(1, 1, size, size, generator=g, device=device) > 0.5).to(dtype)
    return latents, image, mask


def interpret_smoke() -> int:
    """Every case once at tiny shapes through the interpreter, checked against its reference."""
    import torch

    ok = True
    for name, fn, peer, args, kwargs, _ in _cases(16, 16, torch.float32, "cpu"):
        err = _max_err(fn(*args, **kwargs), peer(*args, **kwargs))
        ok &= err < 1e-3
        print(f"{'ok ' if err < 1e-3 else 'BAD'} {name}: max abs err {err:.2e}")
    dec = _decoder("tiny", torch.float32, "cpu")
    inputs = _decode_inputs(16, torch.float32, "cpu")
    with torch.no_grad():
        err = _max_err(dec.set_kernels("triton")(*inputs), dec.set_kernels("torch")(*inputs))
    ok &= err < 1e-3
    print(f"{'ok ' if err < 1e-3 else 'BAD'} tiny decoder triton vs torch: max abs err {err:.2e}")
    print("interpreter smoke run: correctness only; timings need a GPU")
    return 0 if ok else 1


def main() -> int:
    args = _args()
    if args.interpret:
        os.environ["TRITON_INTERPRET"] = "1"  # before asymvq.kernels defines its kernels
        return interpret_smoke()
    import torch

    if not torch.cuda.is_available():
        print("bench/kernels.py needs a CUDA GPU and none is available; nothing was measured.\n"
              "For a CPU correctness smoke run (no timings) use --interpret.", file=sys.stderr)
        return 2
    dtype, device = torch.float16, "cuda"
    results = {"environment": _environment(), "dtype": "float16", "batch": 1, "cases": [], "decode": []}
    # Rewritten after every case: a run cut short (a time limit) keeps what it measured.
    args.out.mkdir(parents=True, exist_ok=True)
    slug = "".join(ch if ch.isalnum() else "-" for ch in results["environment"]["device"].lower()).strip("-")
    path = args.out / f"kernels-{slug}-{datetime.datetime.now(datetime.timezone.utc):%Y%m%dT%H%M%SZ}.json"

    def save():
        path.write_text(json.dumps(results, indent=2))

    print(f"# {results['environment']['device']}  torch {torch.__version__}  fp16 channels-last\n")
    print(f"| {'case':48s} | ours ms | eager ms | compiled ms | ours/eager | ours/compiled | TFLOP/s | GB/s |")
    print("|" + "---|" * 8)
    for size in args.sizes:
        for name, fn, peer, a, kw, flops in _cases(size, C_X15, dtype, device):
            ours_out, peer_out = fn(*a, **kw), peer(*a, **kw)
            nbytes = _nbytes(a, kw, _outputs(ours_out))
            row = {"case": name, "size": size, "flops": flops, "bytes": nbytes, "max_abs_err": _max_err(ours_out, peer_out)}
            row["ours"] = time_ms(lambda fn=fn, a=a, kw=kw: fn(*a, **kw), "cuda", args.warmup, args.repeats)
            row["eager"] = time_ms(lambda peer=peer, a=a, kw=kw: peer(*a, **kw), "cuda", args.warmup, args.repeats)
            if not args.no_compile:
                # Fresh dynamo caches per case: every case recompiles the same reference function,
                # and past the recompile limit dynamo would silently fall back to eager.
                torch._dynamo.reset()
                compiled = torch.compile(peer)
                row["compiled"] = time_ms(lambda compiled=compiled, a=a, kw=kw: compiled(*a, **kw), "cuda", args.warmup, args.repeats)
            t = row["ours"]["median"]
            row["ratio_eager"] = t / row["eager"]["median"]
            row["ratio_compiled"] = t / row["compiled"]["median"] if "compiled" in row else None
            row["tflops"] = flops / t / 1e9 if flops else None
            row["gbps"] = nbytes / t / 1e6
            results["cases"].append(row)
            save()
            comp = f"{row['compiled']['median']:11.3f}" if "compiled" in row else f"{'-':>11s}"
            rc = f"{row['ratio_compiled']:13.2f}" if row["ratio_compiled"] else f"{'-':>13s}"
            tf = f"{row['tflops']:7.1f}" if row["tflops"] else f"{'-':>7s}"
            print(f"| {name:48s} | {t:7.3f} | {row['eager']['median']:8.3f} | {comp} | "
                  f"{row['ratio_eager']:10.2f} | {rc} | {tf} | {row['gbps']:4.0f} |", flush=True)
    if not args.no_decode:
        dec = _decoder("x1.5", dtype, device)
        # decode_core: the decode itself, without forward()'s input checks and their host syncs
        # (the inputs are already what they produce: the decoder's dtype, a 0/1 one-channel mask)
        for size in args.sizes:
            inputs = _decode_inputs(size, dtype, device)
            row = {"preset": "x1.5", "size": size}
            with torch.no_grad():
                outs = {}
                for kernels in ("torch", "triton"):
                    dec.set_kernels(kernels)
                    outs[kernels] = dec.decode_core(*inputs)
                    torch.cuda.reset_peak_memory_stats()
                    row[kernels] = time_ms(lambda inputs=inputs: dec.decode_core(*inputs), "cuda", 3, max(5, args.repeats // 5))
                    row[kernels]["peak_mem_gib"] = torch.cuda.max_memory_allocated() / 2**30
            row["max_abs_err"] = _max_err(outs["triton"], outs["torch"])
            row["ratio"] = row["triton"]["median"] / row["torch"]["median"]
            results["decode"].append(row)
            save()
            print(f"\nx1.5 decode {size}x{size}: triton {row['triton']['median']:.2f} ms, "
                  f"torch {row['torch']['median']:.2f} ms, triton/torch {row['ratio']:.3f}, "
                  f"max |diff| {row['max_abs_err']:.3g}")
    save()
    _plot(results, path.with_suffix(".png"))
    print(f"\nwrote {path} and {path.with_suffix('.png').name}")
    return 0


def _plot(results, path):
    """Horizontal bars of ours/peer per case (log scale; left of 1 = the fused kernel is faster)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = results["cases"]
    labels = [r["case"] for r in rows]
    fig, ax = plt.subplots(figsize=(10, 0.32 * len(rows) + 1.5))
    y = range(len(rows))
    ax.barh([i - 0.2 for i in y], [r["ratio_eager"] for r in rows], height=0.4, label="ours / eager (cuDNN)")
    if any(r["ratio_compiled"] for r in rows):
        ax.barh([i + 0.2 for i in y], [r["ratio_compiled"] or 0 for r in rows], height=0.4, label="ours / torch.compile")
    ax.axvline(1.0, color="k", lw=0.8)
    ax.set_xscale("log")
    ax.set_yticks(list(y), labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("median time ratio (< 1: fused kernel faster)")
    ax.set_title(f"asymvq kernels, {results['environment']['device']}, fp16")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
