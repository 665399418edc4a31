"""Published GPU timings asymvq's GPU check prints beside its own (issues 19 and 20): numbers to beat,
each with where it comes from. Not ours, not re-measured: other GPUs (H100, B200), other weights (real,
ours are random: the same shapes and work), other software (TensorRT). ``variants`` maps our variant
(decoder_gpu.py: torch = eager, triton = fused kernels, compile = torch.compile; "best": our fastest)
to the published milliseconds it compares with.

    from gpu_anchors import decoder_anchors, pipeline_anchors
"""
from __future__ import annotations

# decoder preset -> published decodes at 1024x1024, batch 1
DECODER = {
    "flux": (
        dict(what="FLUX.2 VAE decode 1024x1024 on an H200: eager / fused GroupNorm+SiLU", gpu="H200",
             variants={"torch": 97.6, "triton": 29.2}, source="sglang #33451 (GroupNorm+SiLU ~46 % of the decode at 2048)"),
        dict(what="FLUX.1 VAE decode 1024x1024 on a B200: eager / compiled", gpu="B200",
             variants={"torch": 117.6, "compile": 27.1}, source="unsloth #10889"),
    ),
    "sdxl": (
        dict(what="SDXL VAE decode 1024x1024 on an H100 with TensorRT", gpu="H100", variants={"best": 127.0},
             source="stabilityai/stable-diffusion-xl-1.0-tensorrt model card"),
    ),
}
# ASUKA's decoder is FLUX's plus its branch: FLUX's plain-decoder figures are its floor
DECODER["asuka-flux"] = DECODER["flux"]

# pipeline family -> published whole jobs
PIPELINE = {
    "sdxl": (
        dict(what="SDXL 30 steps 1024x1024 on an H100: TensorRT / PyTorch", gpu="H100",
             variants={"tensorrt": 1471.0, "pytorch": 2496.0}, steps=30, size=1024,
             source="stabilityai/stable-diffusion-xl-1.0-tensorrt model card"),
    ),
    "flux-fill": (
        dict(what="FLUX.1 1024x1024: VAE decode 117 ms of 353 ms GPU time", gpu="B200",
             variants={"decode": 117.6, "job": 353.0}, source="unsloth #10889"),
    ),
}


def decoder_anchors(preset: str, size: int, batch: int, ours_ms: dict[str, float]) -> list[dict]:
    """The published figures for ``preset`` (1024x1024, batch 1 only), each variant beside ours and the ratio
    ours / theirs (< 1: we are faster); ``ours_ms``: our median ms per variant."""
    if size != 1024 or batch != 1:
        return []
    best = min(ours_ms.values()) if ours_ms else None
    rows = []
    for a in DECODER.get(preset, ()):
        cmp = {}
        for variant, theirs in a["variants"].items():
            ours = best if variant == "best" else ours_ms.get(variant)
            cmp[variant] = {"theirs_ms": theirs, "ours_ms": ours, "ours_over_theirs": None if ours is None else ours / theirs}
        rows.append({**{k: v for k, v in a.items() if k != "variants"}, "compare": cmp})
    return rows


def print_anchors(rows: list[dict], label: str) -> None:
    for r in rows:
        parts = [f"{v}: ours {c['ours_ms']:.1f} ms vs {c['theirs_ms']:.1f} ms (x{c['ours_over_theirs']:.2f})"
                 if c["ours_ms"] is not None else f"{v}: {c['theirs_ms']:.1f} ms (ours not run)"
                 for v, c in r["compare"].items()]
        print(f"  anchor {label}: {r['what']} [{r['source']}]: " + "; ".join(parts), flush=True)


def pipeline_anchors(family: str) -> list[dict]:
    return [dict(a) for a in PIPELINE.get(family, ())]
