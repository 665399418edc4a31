"""The whole FLUX.1 Fill and SDXL inpainting jobs on this CPU: diffusers eager fp32 against asymvq, per stage.

What runs (seeded random weights, no downloads; say this next to every number):
- ``--scale medium`` (the default, the record): each family's *real-width* networks with fewer layers,
  because the real FLUX.1-Fill transformer (12B parameters, 48 GB fp32) and T5-XXL (4.7B) do not fit
  in this machine's 23 GB, and the real SDXL UNet (2.6B) takes minutes per step on two cores.
  FLUX.1 Fill: ``FluxTransformer2DModel`` at FLUX's width (24 heads x 128 = 3072) with 1 double-stream
  and 2 single-stream blocks of its 19 + 38 (~0.7B parameters), a 4-layer T5 encoder (d_model 1024) of
  ``TEXT_LEN`` tokens, the real CLIP ViT-L and the real FLUX VAE (``flux`` preset: 16 channels, its
  scale and shift). SDXL: the inpainting UNet (9 channels) at SDXL's widths (320, 640, 1280; heads
  5/10/20, 2048-d cross-attention, text_time added conditions) with 1 resnet per level and
  (1, 1, 2) transformer layers instead of (2 resnets, (1, 2, 10)), the real CLIP ViT-L and OpenCLIP
  ViT-bigG, the real SDXL VAE. ``MEDIUM`` below writes these down.
- ``--scale tiny``: asymvq's ``tiny-flux-fill`` / ``tiny-sdxl`` presets (a check, seconds).

Contenders, interleaved round-robin in one process (one family, then the other), same prompt, image,
mask and seed:
- ``diffusers eager fp32``: ``FluxFillPipeline`` / ``StableDiffusionXLInpaintPipeline``;
- ``asymvq <fastest>``: asymvq's pipeline (``FluxFillInpaintPipeline`` / ``SDXLInpaintPipeline``) with
  every stage at this CPU's fastest backend and precision: torch bf16 (networks cast to bf16,
  channels-last where they convolve; the decoder prepared by ``asymvq.models.cpu_bf16``) when the
  CPU has native bf16 (AMX or avx512_bf16, ``bench_common.cpu_record``), torch fp32 otherwise. The
  transformer, UNet and text encoders have torch only (their ONNX/OpenVINO engines: issue 20 part 5);
  the decoder and VAE encoder have OpenVINO too, and OpenVINO bf16 ties torch bf16 on this CPU
  (bench/results/decoder_cpu.json: 2.37 s and 2.38 s), so torch it is;
- FLUX only, ``asymvq <fastest> + ASUKA``: the same job decoded by ASUKA's conditional decoder
  (``asuka-flux``: the FLUX decoder plus its branch, seeded), fed with the source and the mask;
- ``--with-fp32``: asymvq's pipeline in fp32 on diffusers' own networks (the loop's overhead, exact).

Per stage (seconds summed over a job, forward hooks on the networks): text encoders (CLIP + T5, or
CLIP-L + CLIP-G, with CFG's negative prompt zeroed as SDXL's config says), VAE encoder (the masked image;
strength 1 skips the source's), denoise (transformer / UNet calls: ``--steps``, CFG doubles SDXL's
batch), decoder, other (scheduler, packing, pre/post-processing). Min and median of ``--repeats``
after ``--warmup``; ``fastest_per_stage`` gives the best asymvq contender per stage against diffusers.
PSNR of the images in [0, 1] against diffusers: bf16 changes the trajectory (ASUKA's decoder, the
result), so it measures that too. Writes bench/results/pipeline_family_cpu.json and its .png.

The record (issue 20), one command on a quiet machine:

    .venv/bin/python bench/pipeline_family_cpu.py --family both --size 512 --steps 2 --warmup 1 --repeats 2

2 steps, to stay within ~6 min: the denoise stage is per step (``denoise`` / steps gives any other step
count; counted FLOPs at 512: the medium FLUX transformer 0.84 TFLOP per step, the medium SDXL UNet 0.97
TFLOP per step with CFG, each VAE decoder 2.5 TFLOP, ASUKA's 3.1). Estimate on the 2-core Xeon (AMX),
quiet: ~6 min (building the random networks ~1 min; per round ~45 s FLUX and ~45 s SDXL, diffusers fp32
most of it; 3 rounds); peak RSS ~9 GB (one family at a time; FLUX measured 7.4 GB at 128x128).
A check: ``--scale tiny --size 64 --warmup 0 --repeats 1`` (~30 s).
"""
from __future__ import annotations

import argparse
import copy
import gc
import json
import math
import os
import platform
import statistics
import time
import types
from pathlib import Path

import numpy as np
import PIL.Image
import torch
from bench_common import cpu_record, interleaved, loadavg, psnr, versions

from asymvq.profiling.profiler import cpu_name

HERE = Path(__file__).parent
RESULTS = HERE / "results" / "pipeline_family_cpu.json"
STAGES = ("text-encoders", "vae-encoder", "denoise", "decoder")
PEER = "diffusers eager fp32"
TEXT_LEN = 128  # T5 tokens of the medium FLUX job (FLUX.1: 512)
PROMPT = "a red sofa in a sunlit room"
TINY_PROMPT = "a sofa"  # within the tiny T5's 8 character-level tokens

# The medium networks: real widths, fewer layers (see the module doc).
MEDIUM = {
    "flux-fill": dict(
        transformer=dict(num_layers=1, num_single_layers=2, attention_head_dim=128, num_attention_heads=24,
                         joint_attention_dim=1024, pooled_projection_dim=768, axes_dims_rope=(16, 56, 56)),
        t5=dict(d_model=1024, d_ff=2816, d_kv=64, num_heads=16, num_layers=4, feed_forward_proj="gated-gelu")),
    "sdxl": dict(unet=dict(
        block_out_channels=(320, 640, 1280), layers_per_block=1, sample_size=64, attention_head_dim=(5, 10, 20),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 1, 2), addition_time_embed_dim=256, cross_attention_dim=2048,
        norm_num_groups=32, projection_class_embeddings_input_dim=2816)),
}


def diffusers_pipeline(family: str, scale: str, seed: int):
    """The diffusers pipeline of ``family`` at ``scale`` (tiny: asymvq's presets; medium: ``MEDIUM``)."""
    from asymvq.models import family_networks as fn

    if scale == "tiny":
        return (fn.flux_fill_pipeline("tiny-flux-fill", seed=seed) if family == "flux-fill"
                else fn.sdxl_inpaint_pipeline("tiny-sdxl", seed=seed))
    spec = MEDIUM[family]
    if family == "flux-fill":
        from diffusers import FlowMatchEulerDiscreteScheduler, FluxFillPipeline, FluxTransformer2DModel
        from transformers import T5Config, T5EncoderModel

        c = 16  # FLUX's latent channels
        torch.manual_seed(seed)
        transformer = FluxTransformer2DModel(patch_size=1, in_channels=4 * (2 * c + 64), out_channels=4 * c,
                                             guidance_embeds=True, **spec["transformer"]).eval()
        torch.manual_seed(seed + 2)
        t5 = T5EncoderModel(T5Config(vocab_size=160, **spec["t5"])).eval()  # the in-memory tokenizer's ids
        return FluxFillPipeline(scheduler=FlowMatchEulerDiscreteScheduler(**fn.FLUX_SCHEDULER_CONFIG),
                                vae=fn.build_family_vae("flux", seed=seed), transformer=transformer,
                                text_encoder_2=t5, tokenizer_2=fn.build_t5_tokenizer(TEXT_LEN),
                                **fn.text_encoders_of("flux-fill", seed))
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLInpaintPipeline, UNet2DConditionModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(in_channels=9, out_channels=4, use_linear_projection=True,
                                addition_embed_type="text_time", **spec["unet"]).eval()
    return StableDiffusionXLInpaintPipeline(
        vae=fn.build_family_vae("sdxl", seed=seed), unet=unet,
        scheduler=EulerDiscreteScheduler(**fn.SCHEDULER_CONFIG_SDXL), requires_aesthetics_score=False,
        force_zeros_for_empty_prompt=True, **fn.text_encoders_of("sdxl", seed))


def networks(pipe) -> dict:
    """stage -> the diffusers modules whose calls make it (the decoder: the VAE's, diffusers' own decode)."""
    denoiser = getattr(pipe, "transformer", None) or pipe.unet
    return {"text-encoders": [m for m in (pipe.text_encoder, pipe.text_encoder_2) if m is not None],
            "vae-encoder": [pipe.vae.encoder], "denoise": [denoiser], "decoder": [pipe.vae.decoder]}


def bf16_copy(module):
    """A bf16 copy; channels-last where it convolves (oneDNN's fast bf16 layout: NCHW bf16 runs slower than fp32)."""
    m = copy.deepcopy(module).to(dtype=torch.bfloat16).eval()
    has_conv = any(isinstance(x, torch.nn.Conv2d) for x in m.modules())
    return m.to(memory_format=torch.channels_last) if has_conv else m


def asymvq_pipeline(family: str, pipe, dtype: torch.dtype):
    """asymvq's pipeline of ``family``: over diffusers' own networks (fp32) or bf16 copies of them."""
    from asymvq.pipeline.flux_fill import FluxFillInpaintPipeline
    from asymvq.pipeline.sdxl_inpaint import SDXLInpaintPipeline

    cls = FluxFillInpaintPipeline if family == "flux-fill" else SDXLInpaintPipeline
    if dtype == torch.float32:
        return cls.from_diffusers(pipe)
    # the same pipeline with bf16 copies of its networks, taken over as from_diffusers takes any pipeline
    nets = {n: bf16_copy(getattr(pipe, n)) for n in ("vae", "text_encoder", "text_encoder_2", "transformer", "unet")
            if getattr(pipe, n, None) is not None}
    parts = {n: getattr(pipe, n, None) for n in ("tokenizer", "tokenizer_2", "scheduler", "config", "text_encoder",
                                                 "text_encoder_2", "transformer", "unet")}
    bf16_pipe = types.SimpleNamespace(**{**parts, **nets})
    return cls.from_diffusers(bf16_pipe)


def decoder_engines(preset: str | None, pipe, seed: int, dtype: torch.dtype) -> dict:
    """Decoder engines at ``dtype`` (bf16: prepared by cpu_bf16): the pipeline VAE's own decoder, or a seeded
    decoder ``preset`` (ASUKA's)."""
    from asymvq.engines.torch_engine import torch_decoder_engines
    from asymvq.models.checkpoints import decoder_from_vae
    from asymvq.models.cpu_bf16 import to_cpu_bf16
    from asymvq.models.sources import random_decoder

    name = "bf16" if dtype == torch.bfloat16 else "fp32"
    if preset:
        return torch_decoder_engines(random_decoder(preset, seed=seed + 7, dtype=name))
    decoder = decoder_from_vae(pipe.vae)
    return torch_decoder_engines(to_cpu_bf16(decoder) if dtype == torch.bfloat16 else decoder)


class StageClock:
    """Seconds per stage of the running job, from forward hooks (each module hooked once)."""

    def __init__(self):
        self.seconds = dict.fromkeys(STAGES, 0.0)
        self._t0: dict[int, float] = {}
        self._hooked: set[int] = set()

    def reset(self, *_):
        self.seconds = dict.fromkeys(STAGES, 0.0)

    def hook(self, module: torch.nn.Module, stage: str) -> None:
        if id(module) in self._hooked:
            return
        self._hooked.add(id(module))
        key = id(module)
        module.register_forward_pre_hook(lambda *_: self._t0.__setitem__(key, time.perf_counter()))
        module.register_forward_hook(lambda *_: self._add(stage, key))

    def _add(self, stage, key):
        self.seconds[stage] += time.perf_counter() - self._t0[key]


def inputs(size: int, seed: int):
    """(PIL image, PIL mask with white = repaint): random pixels, a centred box."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    hole = np.zeros((size, size), dtype=np.uint8)
    hole[size // 4: 3 * size // 4, size // 4: 3 * size // 4] = 255
    return PIL.Image.fromarray(pixels), PIL.Image.fromarray(hole)


def family_runs(family: str, args, clock: StageClock, fast: torch.dtype, log) -> tuple[dict, dict]:
    """(name -> job, name -> {stage: backend}) for one family."""
    from asymvq.engines.contract import DECODER_COMPONENTS, VAE_ENCODER
    from asymvq.models.components import DENOISERS

    t = time.perf_counter()
    pipe = diffusers_pipeline(family, args.scale, args.seed)
    pipe.set_progress_bar_config(disable=True)
    fast_name = "bf16" if fast == torch.bfloat16 else "fp32"
    ours_fast = asymvq_pipeline(family, pipe, fast)  # copies made before any hook goes on (deepcopy carries them)
    decoders = {"": decoder_engines(None, pipe, args.seed, fast)}
    if family == "flux-fill":
        decoders[" + ASUKA"] = decoder_engines("asuka-flux" if args.scale == "medium" else "tiny-asuka", pipe,
                                               args.seed, fast)
    ours_fp32 = asymvq_pipeline(family, pipe, torch.float32) if args.with_fp32 else None
    log(f"{family}: networks built in {time.perf_counter() - t:.0f} s")
    for stage, modules in networks(pipe).items():
        for m in modules:
            clock.hook(m, stage)
    for ours in (ours_fast, ours_fp32):
        if ours is None:
            continue
        for name, engine in ours.stages.engines.items():  # every network is a torch engine of the vocabulary
            stage = ("denoise" if name in DENOISERS.values() else "vae-encoder" if name == VAE_ENCODER
                     else "decoder" if name in DECODER_COMPONENTS else "text-encoders")
            clock.hook(engine.module, stage)
    for engines in decoders.values():
        for e in (engines or {}).values():
            clock.hook(e.module, "decoder")

    image, mask = inputs(args.size, args.seed + 1)
    call = dict(prompt=PROMPT if args.scale == "medium" else TINY_PROMPT, image=image, mask_image=mask,
                height=args.size, width=args.size, num_inference_steps=args.steps, strength=1.0, output_type="pt")
    if family == "flux-fill":
        call |= dict(guidance_scale=30.0, max_sequence_length=TEXT_LEN if args.scale == "medium" else 8)
    else:
        call |= dict(guidance_scale=args.guidance)
    gen = lambda: torch.Generator().manual_seed(args.seed)  # noqa: E731
    runs = {f"{family} {PEER}": lambda: pipe(**call, generator=gen()).images}
    backend = {f"{family} {PEER}": dict.fromkeys(STAGES, "diffusers fp32")}
    for suffix, engines in decoders.items():
        name = f"{family} asymvq torch {fast_name}{suffix}"
        runs[name] = lambda engines=engines: ours_fast(**call, decoder=engines, generator=gen()).images
        backend[name] = dict.fromkeys(STAGES, f"torch {fast_name}")
        if suffix:
            backend[name]["decoder"] = f"torch {fast_name} (ASUKA)"
    if ours_fp32 is not None:
        runs[f"{family} asymvq torch fp32"] = lambda: ours_fp32(**call, generator=gen()).images
        backend[f"{family} asymvq torch fp32"] = dict.fromkeys(STAGES, "torch fp32")
    return runs, backend


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--family", choices=("flux-fill", "sdxl", "both"), default="both")
    ap.add_argument("--scale", choices=("medium", "tiny"), default="medium")
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--guidance", type=float, default=7.5, help="SDXL's CFG scale (FLUX Fill: its distilled 30)")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--with-fp32", action="store_true", help="also asymvq's pipeline in fp32 on diffusers' networks")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    log = lambda msg: print(msg, flush=True)  # noqa: E731
    torch.set_num_threads(args.threads)
    load_before = loadavg()
    cpu = cpu_record()
    fast = torch.bfloat16 if cpu["default_dtype"] == "bf16" else torch.float32
    names, backend, times, outputs, stages = [], {}, {}, {}, {}
    # one family after the other (interleaved within it): both families' networks at once would need ~16 GB
    for family in (("flux-fill", "sdxl") if args.family == "both" else (args.family,)):
        clock = StageClock()
        r, b = family_runs(family, args, clock, fast, log)
        names += list(r)
        backend |= b
        stages.update({n: [] for n in r})
        t, o = interleaved(
            r, args.warmup, args.repeats, log, before=clock.reset,
            measured=lambda name, dt, clock=clock: stages[name].append(
                {**clock.seconds, "other": dt - sum(clock.seconds.values())}))
        times |= t
        outputs |= o
        del r  # the networks go with the jobs' closures
        gc.collect()
    stage_med = {n: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for n, rs in stages.items()}
    result = {
        "what": (f"FLUX.1 Fill and SDXL inpainting jobs ({args.scale} random networks: see networks), "
                 f"{args.size}x{args.size}, batch 1, {args.steps} steps, strength 1, FLUX guidance 30 (no CFG), "
                 f"SDXL CFG {args.guidance}, CPU, --threads {args.threads}"),
        "machine": {"cpu": cpu_name(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "python": platform.python_version(), "features": cpu},
        "load_average_1_5_15": {"before": load_before, "after": loadavg()},
        "versions": versions("torch", "diffusers", "transformers"),
        "networks": {"scale": args.scale, "medium": MEDIUM if args.scale == "medium" else None,
                     "t5_tokens": TEXT_LEN if args.scale == "medium" else 8,
                     "vaes": "flux / sdxl decoder presets (real)" if args.scale == "medium" else "tiny-flux / tiny"},
        "warmup": args.warmup, "repeats": args.repeats,
        "stage_backend": backend,
        "seconds": {n: {"min": min(v), "median": statistics.median(v), "all": v} for n, v in times.items()},
        "stage_seconds_median": stage_med,
        "speedup_vs_diffusers": {}, "vs_diffusers_output": {}, "fastest_per_stage": {},
        "notes": ("seconds per stage sum every call of that network in one job (SDXL's UNet: steps calls on a CFG "
                  "batch of 2); other = the job minus its stages; PSNR of images in [0, 1] against diffusers fp32 "
                  "(bf16 and ASUKA's decoder change the image: it measures that too)"),
    }
    for family in dict.fromkeys(n.split(" ", 1)[0] for n in names):
        peer = f"{family} {PEER}"
        mine = [n for n in names if n.startswith(family + " ") and n != peer]
        for n in [peer, *mine]:
            result["speedup_vs_diffusers"][n] = {"median": statistics.median(times[peer]) / statistics.median(times[n]),
                                                 "min": min(times[peer]) / min(times[n])}
            o, ref = outputs[n], outputs[peer]
            result["vs_diffusers_output"][n] = {"psnr_db": psnr(o, ref, 1.0), "max_abs": float((o - ref).abs().max()),
                                                "finite": bool(torch.isfinite(o).all())}
        plain = [n for n in mine if "ASUKA" not in n]
        result["fastest_per_stage"][family] = {
            stage: {"contender": (best := min(plain, key=lambda n: stage_med[n][stage])),
                    "backend": backend[best][stage], "median_s": stage_med[best][stage],
                    "diffusers_median_s": stage_med[peer][stage],
                    "speedup": stage_med[peer][stage] / stage_med[best][stage] if stage_med[best][stage] else math.nan}
            for stage in STAGES} if plain else {}
    _print(result)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    chart = args.out.with_suffix(".png")
    _chart(result, chart)
    log(f"wrote {args.out} and {chart}")


def _print(result: dict) -> None:
    print(result["what"])
    cols = ["min s", "median s", "speed-up"] + [f"{s} s" for s in (*STAGES, "other")] + ["PSNR dB"]
    print(f"{'':<44}" + "".join(f"{c:>15}" for c in cols))
    for n, sec in result["seconds"].items():
        st = result["stage_seconds_median"][n]
        row = [sec["min"], sec["median"], result["speedup_vs_diffusers"][n]["median"], *(st[k] for k in (*STAGES, "other")),
               result["vs_diffusers_output"][n]["psnr_db"]]
        print(f"{n:<44}" + "".join(f"{v:>15.2f}" for v in row))
    print("cpu:", result["machine"]["features"], " load average before / after:", result["load_average_1_5_15"])


def _chart(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(result["seconds"])
    fig, ax = plt.subplots(figsize=(10, 1.4 + 0.4 * len(names)))
    left = [0.0] * len(names)
    split = result["stage_seconds_median"]
    for stage in (*STAGES, "other"):
        vals = [split[n][stage] for n in names]
        ax.barh(names, vals, left=left, label=stage)
        left = [a + b for a, b in zip(left, vals)]
    for i, n in enumerate(names):
        ax.text(left[i], i, f" {result['speedup_vs_diffusers'][n]['median']:.2f}x", va="center", fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("median seconds per job (stacked by stage)")
    ax.set_title(result["what"], fontsize=7)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    ax.set_xlim(0, max(left) * 1.2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
