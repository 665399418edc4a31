"""Every Triton build the decoder needs, compiled for sm_80 and sm_90 without a GPU.

The launches are the host wrappers' own, recorded on the meta device while the decoder runs
with kernels="triton": every preset (vanilla, base, x1.5, x2, and the 16-channel flux and
asuka-flux: ASUKA's branch convs run on the reference path, its area-any level masks feed the fused
blends) and condition family (conv, partial) in fp16, bf16 and fp32, through decode_core and the tiled path's extra full-resolution
blend (TritonOps.condition_features, which no decode path calls, is left out); at image sizes chosen to reach every distinct specialisation
(the GroupNorm split of 1 to 64 slices, an input row whose width is not a multiple of 16).
Image sizes themselves are not specialised on (docs/kernels.md), so these builds serve all.

    python tests/kernels/kernel_builds.py              # compile (cached in build/kernel-builds/), check
    python tests/kernels/kernel_builds.py --markdown   # also print the table of docs/kernels.md

Exit status 1 on a compile error, shared memory over a target's limit or an offered config
that spills (``asymvq.kernels.compile_check.problems``). Run with TRITON_INTERPRET unset.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SIZES = (256, 320, 512, 520)  # splits 1, 4, 16, 64 / 2, 8, 32 / - / W*3 % 16 != 0 at L0
FAMILIES = ("conv", "partial")
DTYPES = ("float16", "bfloat16", "float32")


def _configs():
    from dataclasses import replace

    from asymvq.models.config import PRESETS

    for name in ("vanilla", "base", "x1.5", "x2", "flux", "asuka-flux"):
        config = PRESETS[name]
        if config.condition not in FAMILIES:  # plain decoders, and ASUKA's branch as it is
            yield name, config
            continue
        for family in FAMILIES:
            yield f"{name}/{family}", replace(config, condition=family)


def record_decoder_launches():
    import torch

    from asymvq.kernels import compile_check
    from asymvq.models import AsymmetricDecoder
    from asymvq.models.triton_ops import TritonOps

    class MetaTritonOps(TritonOps):
        def _runs_on(self, t):  # the launches are recorded, never made: meta tensors are what we want
            return t.device.type == "meta"

    ops = MetaTritonOps()
    cl = torch.channels_last
    with compile_check.record() as launches:
        for _, config in _configs():
            with torch.device("meta"):
                dec = AsymmetricDecoder(config).eval()
            for dtype in (getattr(torch, d) for d in DTYPES):
                d = dec.to(dtype=dtype).to(memory_format=cl).set_ops(ops)
                for s in SIZES:
                    latents = torch.empty(1, config.latent_channels, s // 8, s // 8, device="meta", dtype=dtype)
                    image = torch.empty(1, 3, s, s, device="meta", dtype=dtype).contiguous(memory_format=cl)
                    mask = torch.empty(1, 1, s, s, device="meta", dtype=dtype)
                    with torch.no_grad():
                        d.decode_core(latents, image if config.has_condition else None,
                                      mask if config.has_condition else None)
                        if config.has_condition:
                            c = config.block_out_channels[0]
                            h = torch.empty(1, c, s, s, device="meta", dtype=dtype).contiguous(memory_format=cl)
                            ops.blend(h, h, mask)  # the tiled path's last blend, unfused
    return launches


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cache", type=Path, default=ROOT / "build" / "kernel-builds")
    p.add_argument("--no-cache", action="store_true")
    p.add_argument("--workers", type=int, default=None)
    p.add_argument("--markdown", action="store_true", help="print the table of docs/kernels.md")
    args = p.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "on", "yes"):
        print("kernel_builds.py: unset TRITON_INTERPRET (the kernels must be defined for the compiler)", file=sys.stderr)
        return 2
    import triton

    from asymvq.kernels import compile_check

    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # meta tensors: no device warnings worth reading
        launches = record_decoder_launches()
    builds = compile_check.plan(launches)
    cache = None if args.no_cache else args.cache / triton.__version__
    fresh, cached = compile_check.compile_all(builds, cache, args.workers)
    found = compile_check.problems(builds)
    for target in compile_check.TARGETS:
        mine = [b for b in builds if b.target == target and "error" not in b.result]
        if mine:
            print(f"{target}: {len(mine)} builds; max registers {max(b.result['regs'] for b in mine)}, "
                  f"max spills {max(b.result['spills'] for b in mine)} B, max smem {max(b.result['smem'] for b in mine)} B "
                  f"(limit {compile_check._common.smem_limit(compile_check.TARGETS[target])} B)")
    if args.markdown:
        print(compile_check.table(builds))
    for line in found:
        print("PROBLEM", line)
    print(f"kernel builds: {len(launches)} launches -> {len(builds)} builds ({fresh} compiled, {cached} cached) "
          f"on triton {triton.__version__} in {time.perf_counter() - t0:.0f}s; "
          + (f"{len(found)} problems" if found else "no problems"))
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
