"""The whole SD 1.5 inpainting job on this CPU: diffusers against asymvq on its fastest CPU backend.

SD 1.5 shapes with seeded random weights (no downloads): CLIP text encoder, the inpainting UNet
(9 channels), the SD VAE encoder and the x1.5 asymmetric decoder, 256x256, 4 DDIM steps,
classifier-free guidance 7.5, batch 1. The peer is diffusers' ``StableDiffusionInpaintPipeline``
with ``AsymmetricAutoencoderKL``, eager fp32; asymvq runs the *same* weights (exported from the
diffusers modules) as OpenVINO engines at bf16 inference precision, and as its torch engines at
--dtype bf16 (bf16 copies of the networks; the decoder prepared by asymvq.models.cpu_bf16): the two
fast CPU paths of bench/decoder_cpu.py. Both run in one process, interleaved round-robin, with the same prompt,
image, mask and seed. Per-stage seconds come from timing every network call (forward hooks on
diffusers' modules, a wrapper around asymvq's engines); "other" is the rest of the job
(tokenizer, scheduler, pre/post-processing). PSNR and max abs are of the output images in
[0, 1] against diffusers; a bf16 UNet changes the denoising trajectory, so they measure that too.

Exported IRs are cached under out/bench-cache/ (keyed by the weights' hash): the first run
exports the UNet (about 3.4 GB of fp32 ONNX, converted and then deleted) for minutes.

    .venv/bin/python bench/pipeline_cpu.py [--threads 2] [--repeats 3] [--precision bf16]
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch
from bench_common import add_cpu_comparison_args, cpu_record, interleaved, loadavg, psnr, versions

from asymvq.profiling.profiler import cpu_name

HERE = Path(__file__).parent
RESULTS = HERE / "results" / "pipeline_cpu.json"
CACHE = HERE.parent / "out" / "bench-cache"
STAGES = ("text-encoder", "vae-encoder", "unet", "decoder")


def build_diffusers(seed: int, decoder_preset: str):
    from diffusers import AsymmetricAutoencoderKL, DDIMScheduler, StableDiffusionInpaintPipeline

    from asymvq.models import preset_config
    from asymvq.models import sd_networks as sd

    cfg = preset_config(decoder_preset)
    vae_cfg = sd._VAE_CONFIGS["sd15"]  # the SD VAE encoder, as sd.build_vae builds it
    torch.manual_seed(seed)
    vae = AsymmetricAutoencoderKL(
        down_block_types=["DownEncoderBlock2D"] * 4, down_block_out_channels=list(vae_cfg["block_out_channels"]),
        layers_per_down_block=vae_cfg["layers_per_block"], up_block_types=["UpDecoderBlock2D"] * 4,
        up_block_out_channels=list(cfg.block_out_channels), layers_per_up_block=cfg.layers_per_block,
        norm_num_groups=cfg.norm_num_groups,
    ).eval()
    pipe = StableDiffusionInpaintPipeline(
        vae=vae, text_encoder=sd.build_text_encoder("sd15", seed=seed), tokenizer=sd.build_tokenizer("sd15"),
        unet=sd.build_unet("sd15", in_channels=9, seed=seed),
        scheduler=DDIMScheduler.from_config(sd.SCHEDULER_CONFIG), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def component_modules(pipe, decoder_preset: str) -> dict:
    """The asymvq component wrappers over the diffusers pipeline's own networks (weights shared)."""
    from asymvq.models import AsymmetricDecoder
    from asymvq.models.checkpoints import convert_diffusers_state_dict, load_state_dict_strict
    from asymvq.models.component_modules import (
        DecoderComponent,
        TextEncoderComponent,
        UNetComponent,
        VaeEncoderComponent,
    )

    decoder = AsymmetricDecoder(decoder_preset).eval()
    load_state_dict_strict(decoder, convert_diffusers_state_dict(pipe.vae.state_dict()), "diffusers")
    return {"text-encoder": TextEncoderComponent(pipe.text_encoder).eval(),
            "vae-encoder": VaeEncoderComponent(pipe.vae).eval(),
            "unet": UNetComponent(pipe.unet).eval(),
            "decoder": DecoderComponent(decoder).eval()}


def openvino_engines(modules: dict, size: int, precision: str, threads: int, log) -> tuple[dict, dict]:
    """OpenVINO engines of ``modules``: IRs cached under out/bench-cache by weights hash; returns (engines, times)."""
    from asymvq.engines.manifest import weights_sha256
    from asymvq.engines.openvino_engine import OpenVINOEngine
    from asymvq.export import Shapes, io_specs
    from asymvq.export.onnx_export import export_onnx
    from asymvq.export.openvino_export import export_openvino
    from asymvq.export.specs import spatial_multiple

    shapes = Shapes((1, 1, 1), (size, size, size), (size, size, size))  # static: the size benchmarked
    engines, times = {}, {"export_s": {}, "load_s": {}}
    for name, module in modules.items():
        inputs, outputs = io_specs(name, module, shapes, "fp32")
        digest = weights_sha256(module)
        folder = CACHE / f"pipeline-{name}-{size}-{digest[:16]}"
        xml = folder / f"{name}.xml"
        if not (xml.is_file() and xml.with_suffix(".bin").is_file()):
            log(f"exporting {name} to OpenVINO (cached in {folder})")
            t = time.perf_counter()
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
            with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
                onnx = export_onnx(module, inputs, outputs, Path(tmp) / f"{name}.onnx",
                                   multiple=spatial_multiple(name, module))[0]
                export_openvino(onnx, xml)
            times["export_s"][name] = round(time.perf_counter() - t, 1)
        t = time.perf_counter()
        engines[name] = OpenVINOEngine(name, xml, inputs, outputs, precision=precision, threads=threads,
                                       cache_dir=folder / "compiled")
        times["load_s"][name] = round(time.perf_counter() - t, 2)
    return engines, times


def torch_bf16_engines(pipe, decoder) -> dict:
    """asymvq's torch engines at --dtype bf16 over bf16 copies of the same networks (decoder: cpu_bf16)."""
    import copy
    from types import SimpleNamespace

    from asymvq.engines.torch_engine import torch_engines
    from asymvq.models.cpu_bf16 import to_cpu_bf16

    def bf16(module):
        return copy.deepcopy(module).to(dtype=torch.bfloat16, memory_format=torch.channels_last).eval()

    vae = SimpleNamespace(encoder=bf16(pipe.vae.encoder), quant_conv=bf16(pipe.vae.quant_conv))  # what encoding uses
    return torch_engines(unet=bf16(pipe.unet), vae_encoder_source=vae, text_encoder=bf16(pipe.text_encoder),
                         decoder=to_cpu_bf16(copy.deepcopy(decoder)))


class StageClock:
    """Seconds per stage of one job: forward hooks (diffusers modules) or engine wrappers (asymvq)."""

    def __init__(self):
        self.seconds = {s: 0.0 for s in STAGES}
        self._t0: dict[str, float] = {}

    def reset(self):
        self.seconds = {s: 0.0 for s in STAGES}

    def hook(self, module: torch.nn.Module, stage: str) -> None:
        module.register_forward_pre_hook(lambda *_: self._t0.__setitem__(stage, time.perf_counter()))
        module.register_forward_hook(lambda *_: self._add(stage))

    def _add(self, stage):
        self.seconds[stage] += time.perf_counter() - self._t0[stage]

    def wrap(self, engine, stage: str):
        clock = self

        class Timed:
            def __getattr__(self, name):
                return getattr(engine, name)

            def __call__(self, **feeds):
                t = time.perf_counter()
                try:
                    return engine(**feeds)
                finally:
                    clock.seconds[stage] += time.perf_counter() - t

        return Timed()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_cpu_comparison_args(ap, RESULTS)
    ap.add_argument("--decoder", default="x1.5")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--guidance", type=float, default=7.5)
    ap.add_argument("--precision", default="bf16", help="OpenVINO inference precision for asymvq: bf16 or fp32")
    ap.add_argument("--export-only", action="store_true", help="build the cached IRs and stop")
    ap.add_argument("--no-torch-bf16", action="store_true", help="leave out asymvq's torch bf16 contender")
    args = ap.parse_args()
    log = lambda msg: print(msg, flush=True)  # noqa: E731
    torch.set_num_threads(args.threads)
    load_before = loadavg()

    from asymvq.models import sd_networks as sd
    from asymvq.pipeline import InpaintPipeline
    from asymvq.pipeline.schedulers import make_scheduler
    from asymvq.pipeline.stages import PipelineSpec

    pipe = build_diffusers(args.seed, args.decoder)
    modules = component_modules(pipe, args.decoder)
    ov_engines, ov_times = openvino_engines(modules, args.size, args.precision, args.threads, log)
    if args.export_only:
        log(f"IRs ready: {ov_times}")
        return
    ours_decoder = modules.pop("decoder").decoder
    # copied before the hooks go on diffusers' modules: a deepcopy would carry them and count twice
    torch_bf16 = None if args.no_torch_bf16 else torch_bf16_engines(pipe, ours_decoder)
    clock = StageClock()
    for module, stage in ((pipe.text_encoder, "text-encoder"), (pipe.vae.encoder, "vae-encoder"),
                          (pipe.unet, "unet"), (pipe.vae.decoder, "decoder")):
        clock.hook(module, stage)
    ours = InpaintPipeline({n: clock.wrap(e, n) for n, e in ov_engines.items()},
                           scheduler=make_scheduler("ddim", sd.SCHEDULER_CONFIG),
                           spec=PipelineSpec(unet_in_channels=9, sample_size=64), tokenizer=pipe.tokenizer)

    g = torch.Generator().manual_seed(args.seed + 1)
    s = args.size
    image = torch.rand(1, 3, s, s, generator=g)  # [0, 1], as diffusers' pt input
    mask = torch.zeros(1, 1, s, s)
    mask[..., s // 4: 3 * s // 4, s // 4: 3 * s // 4] = 1
    call = dict(prompt="a red sofa in a sunlit room", image=image, mask_image=mask, height=s, width=s,
                num_inference_steps=args.steps, guidance_scale=args.guidance, output_type="pt")
    runs = {
        "diffusers eager fp32": lambda: pipe(**call, generator=torch.Generator().manual_seed(args.seed)).images,
        f"asymvq openvino {args.precision}": lambda: ours(**call, generator=torch.Generator().manual_seed(args.seed)).images,
    }
    if torch_bf16 is not None:
        bf16 = InpaintPipeline({n: clock.wrap(e, n) for n, e in torch_bf16.items()},
                               scheduler=make_scheduler("ddim", sd.SCHEDULER_CONFIG),
                               spec=PipelineSpec(unet_in_channels=9, sample_size=64, dtype=torch.bfloat16),
                               tokenizer=pipe.tokenizer)
        runs["asymvq torch bf16"] = lambda: bf16(**call, generator=torch.Generator().manual_seed(args.seed)).images
    stages = {n: [] for n in runs}
    times, outputs = interleaved(
        runs, args.warmup, args.repeats, log, before=lambda name: clock.reset(),
        measured=lambda name, dt: stages[name].append({**clock.seconds, "other": dt - sum(clock.seconds.values())}))
    ref = outputs["diffusers eager fp32"]
    med = {n: statistics.median(v) for n, v in times.items()}
    peer = med["diffusers eager fp32"]
    result = {
        "what": (f"SD 1.5 inpainting (random weights, real shapes) + {args.decoder} decoder, {s}x{s}, batch 1, "
                 f"{args.steps} DDIM steps, CFG {args.guidance}, CPU, --threads {args.threads}"),
        "machine": {"cpu": cpu_name(), "cpu_features": cpu_record(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "python": platform.python_version()},
        "load_average_1_5_15": {"before": load_before, "after": loadavg()},
        "versions": versions("torch", "openvino", "diffusers", "transformers"),
        "warmup": args.warmup, "repeats": args.repeats, "openvino": ov_times,
        "seconds": {n: {"min": min(v), "median": statistics.median(v), "all": v} for n, v in times.items()},
        "stage_seconds_median": {n: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for n, rs in stages.items()},
        "speedup_vs_diffusers": {n: {"median": peer / med[n], "min": min(times["diffusers eager fp32"]) / min(times[n])}
                                 for n in runs},
        "vs_diffusers_output": {n: {"psnr_db": psnr(o, ref, 1.0), "max_abs": float((o.float() - ref.float()).abs().max()),
                                    "finite": bool(torch.isfinite(o).all())} for n, o in outputs.items()},
        "notes": "seconds per stage sum every call of that network in one job (UNet: steps calls on a CFG batch of 2); "
                 "PSNR of images in [0, 1]; a bf16 UNet changes the trajectory, so PSNR measures that as well",
    }
    _print(result)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    chart = args.out.with_suffix(".png")
    _chart(result, chart)
    log(f"wrote {args.out} and {chart}")


def _print(result: dict) -> None:
    print(result["what"])
    cols = ["min s", "median s", "speed-up"] + [f"{s} s" for s in (*STAGES, "other")] + ["PSNR dB"]
    print(f"{'':<28}" + "".join(f"{c:>14}" for c in cols))
    for n, sec in result["seconds"].items():
        st = result["stage_seconds_median"][n] or {k: math.nan for k in (*STAGES, "other")}
        row = [sec["min"], sec["median"], result["speedup_vs_diffusers"][n]["median"], *(st[k] for k in (*STAGES, "other")),
               result["vs_diffusers_output"][n]["psnr_db"]]
        print(f"{n:<28}" + "".join(f"{v:>14.2f}" for v in row))
    print("load average before / after:", result["load_average_1_5_15"])


def _chart(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(result["seconds"])
    fig, ax = plt.subplots(figsize=(10, 3.2))
    left = [0.0] * len(names)
    split = result["stage_seconds_median"]
    for stage in (*STAGES, "other"):
        vals = [split[n][stage] if split.get(n) else 0.0 for n in names]
        ax.barh(names, vals, left=left, label=stage)
        left = [a + b for a, b in zip(left, vals)]
    unsplit = [result["seconds"][n]["median"] if not split.get(n) else 0.0 for n in names]
    if any(unsplit):
        ax.barh(names, unsplit, left=left, color="#bbbbbb", label="total (split not valid)")
        left = [a + b for a, b in zip(left, unsplit)]
    for i, n in enumerate(names):
        ax.text(left[i], i, f" {result['speedup_vs_diffusers'][n]['median']:.2f}x", va="center")
    ax.set_xlabel("median seconds per job (stacked by stage)")
    ax.set_title(result["what"], fontsize=7)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    ax.set_xlim(0, max(left) * 1.2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
