"""Profile report outputs: the terminal table (TensorRT demo style), the JSON file and the PNG chart."""
from __future__ import annotations

import json
import math
from pathlib import Path

from ..pipeline.stages import SPAN_DECODE, SPAN_SCHEDULER, SPAN_TEXT, SPAN_UNET, SPAN_VAE_ENCODE
from .flops import denoiser_total_label
from .profiler import SPAN_DIFFUSION

WIDTHS = (26, 16, 16, 14, 12, 14, 9)  # the last three: FLOP columns (--flops)
SI = ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k"))


def _ms(v: float | None) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.2f} ms"


def _bytes(v: int | None) -> str:
    return "-" if v is None else f"{v / 2**20:,.0f} MiB"


def _memory(m: dict | None) -> str:
    if not m:
        return "-"
    return f"{_bytes(m['peak_bytes'])} (+{_bytes(m['added_bytes'])})" if m.get("added_bytes") is not None else _bytes(m["peak_bytes"])


def _si(v: float | None, unit: str) -> str:
    """1.607e12, "FLOP" -> "1.61 TFLOP"."""
    if v is None:
        return "-"
    for scale, prefix in SI:
        if abs(v) >= scale:
            return f"{v / scale:.3g} {prefix}{unit}"
    return f"{v:.3g} {unit}"


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f} %"


def _row(*cells: str, widths=WIDTHS) -> str:
    first, *rest = cells
    return "|" + f" {first:<{widths[0] - 2}} " + "".join(f"| {c:>{w - 2}} " for c, w in zip(rest, widths[1:])) + "|"


def _rule(n: int = 4, widths=WIDTHS) -> str:
    return "|" + "|".join("-" * w for w in widths[:n]) + "|"


def _flop_cells(stage: dict | None, k: int = 1) -> tuple[str, str, str]:
    """FLOP (times the step count for per-step rows), achieved FLOP/s and share of the probed peak."""
    if not stage or stage.get("flops") is None:
        return "-", "-", "-"
    return _si(k * stage["flops"], "FLOP"), _si(stage.get("achieved_flops_per_s"), "FLOP/s"), _pct(stage.get("peak_share"))


def _denoiser(report: dict) -> str:
    """What the denoising network is called in the tables: FLUX's is a transformer, the others' a UNet."""
    return "Transformer" if "flux" in report["config"]["preset"] else "UNet"


def _stage_rows(report: dict) -> list[tuple[str, dict, int]]:
    """(label, stats, multiplier) in pipeline order; per-step stages are shown times the step count."""
    stages, steps = report["stages"], report["config"]["steps"]
    diffusion = report["diffusion"]
    cfg = " (CFG)" if diffusion["unet_batch"] > report["config"]["batch"] else ""
    preset = report["config"]["preset"]
    text = "Text encoders" if "flux" in preset or "sdxl" in preset else "CLIP"  # SDXL: 2 CLIPs; FLUX: CLIP + T5
    rows = [(text, stages.get(SPAN_TEXT), 1), ("VAE-Enc", stages.get(SPAN_VAE_ENCODE), 1),
            (f"{_denoiser(report)} x {steps}{cfg}", stages.get(SPAN_UNET), steps),
            (f"Scheduler x {steps}", stages.get(SPAN_SCHEDULER), steps),
            ("Diffusion (end to end)", stages.get(SPAN_DIFFUSION), 1)]
    return [r for r in rows if r[1] is not None]


def format_table(report: dict) -> str:
    """The summary a terminal prints: every stage, each decoder, the pipeline per decoder, throughput."""
    c, dev = report["config"], report["device"]
    counted = report.get("flops") is not None  # --flops: three more columns
    n = 7 if counted else 4
    extra = ("FLOP", "FLOP/s", "% peak") if counted else ()
    lines = [
        f"asymvq profile: {c['preset']} {c['height']}x{c['width']}, batch {c['batch']}, {c.get('dtype_choice') or c['dtype']}, "
        f"{dev['type']} ({dev.get('name')}), {c['steps']} steps {c['scheduler'].upper()}, guidance {c['guidance_scale']}",
        f"{c['repeats']} measured runs after {c['warmup']} warm-up; timer {report['timer']}; memory {report['memory']}",
        _rule(n), _row("Module", "Latency (p50)", "min", "p90", *extra), _rule(n),
    ]
    for label, s, k in _stage_rows(report):
        flop = _flop_cells(s, k) if counted else ()
        lines.append(_row(label, _ms(k * s["median_ms"]), _ms(k * s["min_ms"]), _ms(k * s["p90_ms"]), *flop))
    lines.append(_rule(n))
    for name in c["decoders"]:
        s = report["stages"][f"{SPAN_DECODE}/{name}"]
        flop = _flop_cells(s) if counted else ()
        lines.append(_row(f"Decoder {name}", _ms(s["median_ms"]), _ms(s["min_ms"]), _ms(s["p90_ms"]), *flop))
    lines.append(_rule(n))
    for name, d in report["decoders"].items():
        lines.append(_row(f"Pipeline ({name})", _ms(d["pipeline_median_ms"]), "", ""))
    lines.append(_rule())
    lines += ["", "Decoder versus diffusion (medians):", _rule(4),
              _row("Decoder", "share of total", f"vs {_denoiser(report)} x {c['steps']}", "images/s"), _rule(4)]
    for name, d in report["decoders"].items():
        lines.append(_row(name, f"{100 * d['decode_share']:.1f} %", f"{100 * d['decode_vs_unet_total']:.1f} %",
                          f"{d['images_per_s']:.3f}"))
    lines.append(_rule(4))
    peaks = ", ".join(f"{n} {_memory(d.get('memory'))}" for n, d in report["decoders"].items())
    lines.append(f"Peak memory (added by the stage): diffusion {_memory(report['stages'][SPAN_DIFFUSION].get('memory'))}; "
                 f"decode {peaks}")
    for name, d in report["decoders"].items():
        lines.append(f"Throughput ({name}): {d['images_per_s']:.3f} image/s")
    if report.get("peak"):
        p = report["peak"]
        lines.append(f"Peak for % peak: {_si(p['flops_per_s'], 'FLOP/s')}, {p['dtype']} {p['op']} on {p['device']} "
                     f"({p['threads']} threads), best of {p['runs']}: a probe at start-up, not a spec. FLOP/s = "
                     f"counted FLOPs of one sample / its median.")
    if c["preset"] == "tiny":
        lines.append("Note: preset tiny uses toy UNet/CLIP/VAE-encoder networks; decoder shares are only "
                     "meaningful with --preset sd15.")
    if report.get("flop_table"):
        lines += ["", format_flop_table(report["flop_table"])]
    return "\n".join(lines)


FLOP_WIDTHS = (26, 18, 18, 18, 18)


def format_flop_table(job: dict) -> str:
    """The counted decoder-versus-diffusion table, and its floor on named GPUs (``asymvq.profiling.flops.project``)."""
    f, steps = job["flops"], job["steps"]
    cfg = ", CFG" if job["unet_batch"] > job["batch"] else ""
    unet_all = denoiser_total_label(job)
    w = FLOP_WIDTHS
    lines = [f"Decoder versus diffusion, counted FLOPs (not measured): {job['preset']} {job['height']}x{job['width']}, "
             f"batch {job['batch']}, {steps} steps {job['scheduler'].upper()}{cfg}; counted on the meta device in "
             f"{job['count_s']:.1f} s",
             f"job = text + VAE-Enc + {steps} x ({unet_all.split(' x ')[0]} + scheduler) + decode; diffusion part "
             f"{_si(job['diffusion_flops'], 'FLOP')} ({unet_all} {_si(f[unet_all], 'FLOP')})",
             _rule(4, w), _row("Decoder", "decode", "share of job", f"vs {unet_all.split(' (')[0]}", widths=w),
             _rule(4, w)]
    for name, d in job["decoders"].items():
        lines.append(_row(name, _si(d["flops"], "FLOP"), _pct(d["share_of_job"]), _pct(d["vs_unet_total"]), widths=w))
    lines.append(_rule(4, w))
    shares = job.get("shares_at_steps")
    if shares:
        counts = list(next(iter(shares.values())))
        lines += ["", "Decoder's share of the job by step count (counted):", _rule(1 + len(counts), w),
                  _row("Decoder", *(f"{n} steps" for n in counts), widths=w), _rule(1 + len(counts), w)]
        lines += [_row(name, *(_pct(v) for v in by.values()), widths=w) for name, by in shares.items()]
        lines.append(_rule(1 + len(counts), w))
    proj = job.get("projection")
    if proj:
        gpus = list(proj["gpus"])
        n = 1 + len(gpus)
        lines += ["", "Projected floor on named GPUs, decode / whole job (FLOPs / datasheet dense fp16/bf16 peak; "
                      "a floor, not a measurement):",
                  _rule(n, w), _row("Decoder", *(f"{g} {proj['gpus'][g]['peak_flops_per_s'] / 1e12:.0f}T" for g in gpus),
                                    widths=w), _rule(n, w)]
        for name in job["decoders"]:
            cells = []
            for g in gpus:
                d = proj["gpus"][g]["decoders"][name]
                cells.append(f"{d['decode_ms']:.1f} / {d['job_ms']:.0f} ms")
            lines.append(_row(name, *cells, widths=w))
        lines.append(_rule(n, w))
    return "\n".join(lines)


def format_flops_only(report: dict) -> str:
    """``asymvq profile --flops-only``: every stage's FLOPs, the decoder table and the GPU floor."""
    acc, f = report["flop_accounting"], report["flops"]
    w = (26, 18, 22)
    cfg = ", CFG" if acc["unet_batch"] > acc["batch"] else ""
    lines = [f"asymvq profile --flops-only: {acc['preset']} {acc['height']}x{acc['width']}, batch {acc['batch']}, "
             f"{acc['steps']} steps {acc['scheduler'].upper()}{cfg} (UNet batch {acc['unet_batch']}); nothing run",
             _rule(3, w), _row("Stage", "FLOP", "of which attention", widths=w), _rule(3, w)]
    for label, v in f.items():
        lines.append(_row(label, _si(v, "FLOP"), _si(acc["attention_flops"].get(label), "FLOP"), widths=w))
    lines += [_rule(3, w), f"Method: {acc['method']}.", "", format_flop_table({**acc, "flops": f})]
    return "\n".join(lines)


def write_json(report: dict, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, sort_keys=False) + "\n")
    return path


def plot(report: dict, path) -> Path:
    """One stacked bar per decoder: text, VAE encode, UNet, scheduler, other host work, decode."""
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    stages, c = report["stages"], report["config"]
    steps = c["steps"]
    med = lambda name, k=1: k * stages[name]["median_ms"] if name in stages else 0.0  # noqa: E731
    parts = [("CLIP", med(SPAN_TEXT)), ("VAE encode", med(SPAN_VAE_ENCODE)),
             (f"UNet x {steps}", med(SPAN_UNET, steps)), (f"Scheduler x {steps}", med(SPAN_SCHEDULER, steps))]
    other = max(med(SPAN_DIFFUSION) - sum(v for _, v in parts), 0.0)
    parts.append(("other (host, glue)", other))
    names = list(c["decoders"])
    fig, ax = plt.subplots(figsize=(1.6 * len(names) + 3.5, 4.8))
    bottom = [0.0] * len(names)
    colors = plt.get_cmap("tab10").colors
    for i, (label, value) in enumerate(parts):
        ax.bar(names, [value] * len(names), bottom=bottom, label=label, color=colors[i])
        bottom = [b + value for b in bottom]
    decode = [med(f"{SPAN_DECODE}/{n}") for n in names]
    ax.bar(names, decode, bottom=bottom, label="decode", color=colors[len(parts)])
    for x, (b, d, n) in enumerate(zip(bottom, decode, names)):
        ax.text(x, b + d, f"{100 * report['decoders'][n]['decode_share']:.1f}%", ha="center", va="bottom", fontsize=9)
    ax.set_ylabel("median latency (ms)")
    dev = report["device"]
    ax.set_title(f"{c['preset']} {c['height']}x{c['width']} {c['dtype']}, {c['steps']} steps, {dev.get('name')}", fontsize=10)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
