"""How much the decoder costs next to diffusion: per-stage latency and memory, several decoders in one run.

One measurement = one full diffusion run (text encode, VAE encode, every UNet step with CFG,
every scheduler step) or one decode. Each repeat runs the diffusion once, then every decoder
on the very same latents; warm-up repeats are run and thrown away. The result is a plain
dict, the JSON report whose schema docs/profiling.md documents (``SCHEMA``).
"""
from __future__ import annotations

import datetime as _dt
import os
import platform
from dataclasses import asdict, dataclass

import torch

from .. import __version__
from ..engines.contract import DECODER, capabilities
from ..models.config import PRESET_ALIASES, PRESETS
from ..models.cpu_features import cpu_features
from ..models.devices import dtype_reason, parse_device, parse_dtype, resolve_dtype_name
from ..models.environment import package_versions
from ..models.family_networks import FAMILY_PRESETS
from ..pipeline.checks import check_int
from ..pipeline.decode_modes import NOTE_REGION
from ..pipeline.inpaint_pipeline import InpaintPipeline
from ..pipeline.parts import random_decoder_engines
from ..pipeline.stages import SPAN_DECODE, SPAN_SCHEDULER, SPAN_TEXT, SPAN_UNET, SPAN_VAE_ENCODE
from .family_flops import FAMILY_DECODERS, REAL_DECODERS, REAL_PRESET, count_family_job, is_flux
from .flops import count_job, probe_peak, project, scheduler_label, unet_label
from .timing import PeakMemory, StageTimer, summarize

SCHEMA = "asymvq.profile/2"  # 2: FLOP accounting (flops, flop_accounting, peak, flop_table)
SPAN_DIFFUSION = "diffusion"  # the whole denoise() call, end to end
PER_RUN = (SPAN_TEXT, SPAN_VAE_ENCODE)  # summed per run (CFG encodes two prompts)
PER_STEP = (SPAN_UNET, SPAN_SCHEDULER)  # one sample per denoising step
DEFAULT_DECODERS = ("vanilla", "base", "x1.5", "x2")
PROMPT = "a photograph of a cat sitting on a sofa, detailed, 4k"


@dataclass
class ProfileConfig:
    preset: str = "tiny"
    decoders: tuple[str, ...] | None = None  # default: DEFAULT_DECODERS, or the family preset's (FAMILY_DECODERS)
    steps: int = 10
    # 32x32 keeps the four real-size decoders of the default CPU run well under a minute on two cores
    height: int = 32
    width: int = 32
    batch: int = 1
    device: str = "cpu"
    # "auto": bf16 on a CPU with avx512_bf16 or AMX, fp32 on other CPUs, fp16 on CUDA (asymvq.models.devices);
    # resolved on construction, so every later use and the report see the precision that ran, and
    # dtype_choice says what decided it
    dtype: str = "auto"
    dtype_choice: str = ""
    warmup: int = 1
    repeats: int = 3
    guidance_scale: float = 7.5
    scheduler: str = "ddim"
    seed: int = 0
    nvtx: bool = False
    kernels: str = "torch"
    # Count every stage's FLOPs (meta device, seconds), probe the matmul peak at start-up and
    # report achieved FLOP/s and the share of that peak per measured stage (asymvq.profiling.flops).
    flops: bool = False
    # Region decoding of every measured decode ({"region": "mask" | "auto", "margin": K, "region_stats": "box" |
    # "lowres"}, asymvq.pipeline.decode_modes); what each decoder decoded, and with which statistics, is the report's
    # "decode_region".
    decode_options: dict | None = None

    def __post_init__(self):
        if self.decoders is None:
            self.decoders = FAMILY_DECODERS.get(self.preset, DEFAULT_DECODERS)
        self.decoders = tuple(self.decoders)
        if not self.decoders or len(set(self.decoders)) != len(self.decoders):
            raise ValueError(f"decoders: expected distinct preset names, got {list(self.decoders)}")
        for name, v, lo in (("steps", self.steps, 1), ("batch", self.batch, 1), ("repeats", self.repeats, 1),
                            ("warmup", self.warmup, 0)):
            check_int(v, name, minimum=lo)
        self.dtype_choice = dtype_reason(self.dtype, self.device)
        self.dtype = resolve_dtype_name(self.dtype, self.device)


def default_config(cuda: bool | None = None) -> ProfileConfig:
    """The built-in default: tiny on a CPU; SD 1.5 shapes at 512x512, fp16, 50 steps on a GPU."""
    cuda = torch.cuda.is_available() if cuda is None else cuda
    if cuda:
        return ProfileConfig(preset="sd15", steps=50, height=512, width=512, device="cuda", dtype="auto",
                             warmup=2, repeats=5)
    return ProfileConfig()


def synthetic_inputs(height: int, width: int, seed: int):
    """A smooth seeded RGB image in [0, 1] and a centred rectangular hole (a quarter of the area)."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(1, 3, max(height // 16, 1), max(width // 16, 1), generator=g)
    image = torch.nn.functional.interpolate(low, size=(height, width), mode="bilinear", align_corners=False)
    mask = torch.zeros(1, 1, height, width)
    mask[..., height // 4: 3 * height // 4, width // 4: 3 * width // 4] = 1.0
    return image, mask


def _params(engines: dict) -> int | None:
    """The decoder's weight count, where its engine states it (torch engines do, exported ones do not)."""
    return capabilities(next(iter(engines.values()))).parameters


def cpu_name() -> str:
    return cpu_features().model


def environment(device: torch.device) -> dict:

    # the CPU's model and the features that decide its precision, with every number (issue: the CPU changes)
    dev = {"type": device.type, "cpu": cpu_name(), "cpu_features": cpu_features().to_dict(), "cpu_count": os.cpu_count(),
           "torch_threads": torch.get_num_threads()}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        dev.update(name=props.name, capability=f"{props.major}.{props.minor}", memory_bytes=props.total_memory,
                   cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version())
        try:
            import pynvml  # optional: the driver version, when nvidia-ml-py is installed

            pynvml.nvmlInit()
            dev["driver"] = pynvml.nvmlSystemGetDriverVersion()
        except Exception:  # noqa: BLE001 - no NVML or no driver: the version is unknown, not an error
            dev["driver"] = None
    else:
        dev["name"] = dev["cpu"]
    versions = {"asymvq": __version__, **package_versions(("torch", "diffusers", "transformers", "triton")),
                "python": platform.python_version()}
    return {"device": dev, "versions": versions, "platform": platform.platform()}


def _split(spans: list[tuple[str, float]]) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    for name, ms in spans:
        out.setdefault(name, []).append(ms)
    return out


def profile(config: ProfileConfig, *, pipeline=None, decoders: dict | None = None, progress=None, log=print) -> dict:
    """Run the profile described by ``config``; returns the report dict (see docs/profiling.md).

    By default the pipeline and every decoder are built from the config's presets with random
    weights. Pass ``pipeline`` (any ``InpaintPipeline``, e.g. over ONNX or TensorRT engines) and
    optionally ``decoders`` (``{name: {"decoder"/"decoder-plain": Engine}}``, named as in
    ``config.decoders``) to profile those instead; without ``decoders`` the pipeline's own decoder
    is measured under ``config.decoders[0]``. The pipeline is not modified: the timer and the
    scheduler are arguments of each call.

    Steps: 1. build or check the pipeline and decoders; 2. per repeat, run the diffusion once and
    every decoder on its latents, each under the profile's timer; 3. keep the recorded repeats;
    4. summarise them into the report.
    """
    # 1. pipeline and decoders
    device = parse_device(config.device)
    if pipeline is None:
        log(f"building {config.preset} pipeline ({config.dtype}, {device}) and decoders {', '.join(config.decoders)} ...")
        family = config.preset in FAMILY_PRESETS
        options = {} if family else dict(kernels=config.kernels)
        if not (family and is_flux(config.preset)):
            options["scheduler"] = config.scheduler
        pipeline = InpaintPipeline.from_preset(config.preset, decoder=config.decoders[0], dtype=config.dtype,
                                               device=device, seed=config.seed, **options)
        decoders = {config.decoders[0]: pipeline.stages.decoders()}
        decoders.update(random_decoder_engines(config.decoders[1:], seed=config.seed, dtype=config.dtype, device=device,
                                               kernels=config.kernels))
    else:
        decoders = decoders if decoders is not None else {config.decoders[0]: pipeline.stages.decoders()}
    if list(decoders) != list(config.decoders):
        raise ValueError(f"decoders: expected engines named {list(config.decoders)} (config.decoders), got {list(decoders)}")
    accounting = peak = None
    if config.flops:
        accounting, peak = count_for_profile(config, log=log)
    image, mask = synthetic_inputs(config.height, config.width, config.seed)
    timer, memory = StageTimer(device, nvtx=config.nvtx), PeakMemory(device)
    samples: dict[str, list[float]] = {}
    peaks: dict[str, dict] = {}
    regions: dict[str, dict] = {}  # decoder -> the region it decoded (with config.decode_options)

    def keep_peak(bucket: str, m: dict) -> None:
        old = peaks.get(bucket)
        peaks[bucket] = m if old is None or m["peak_bytes"] > old["peak_bytes"] else old

    def keep(bucket: str, values: list[float]) -> None:
        samples.setdefault(bucket, []).extend(values)

    # 2. and 3. the runs, the first ``warmup`` thrown away
    total = config.warmup + config.repeats
    for r in range(total):
        recording = r >= config.warmup
        memory.reset()
        with timer.span(SPAN_DIFFUSION):
            denoised = pipeline.denoise(
                PROMPT, image=image, mask_image=mask, num_inference_steps=config.steps,
                guidance_scale=config.guidance_scale, num_images_per_prompt=config.batch,
                generator=torch.Generator().manual_seed(config.seed), timer=timer, **_family_options(config),
            )
        spans = _split(timer.collect())
        if recording:
            keep_peak(SPAN_DIFFUSION, memory.measure())
            keep(SPAN_DIFFUSION, spans[SPAN_DIFFUSION])
            for name in PER_RUN:
                keep(name, [sum(spans.get(name, [0.0]))])
            for name in PER_STEP:
                keep(name, spans.get(name, []))
        for name, engines in decoders.items():
            bucket = f"{SPAN_DECODE}/{name}"
            decode_timer = StageTimer(device, nvtx=config.nvtx, rename={SPAN_DECODE: bucket})
            memory.reset()
            # a plain decoder (vanilla) has no mask to crop around: it decodes the whole image
            options = config.decode_options if DECODER in engines else None
            pipeline.decode(denoised, decoder=engines, timer=decode_timer, decode_options=options)
            spans = _split(decode_timer.collect())
            if NOTE_REGION in decode_timer.notes:
                regions[name] = decode_timer.notes[NOTE_REGION].to_dict()
            if recording:
                keep(bucket, spans[bucket])
                keep_peak(bucket, memory.measure())
        if progress is not None:
            progress(r + 1, total)
    # 4. the report
    report = build_report(config, samples, peaks, memory.kind, timer.method, device,
                          {n: _params(e) for n, e in decoders.items()})
    if regions:
        report["decode_region"] = regions
    if accounting is not None:
        add_flops(report, accounting, peak)
    return report


def _family_options(config: ProfileConfig) -> dict:
    """What the family's ``denoise`` takes beyond the common arguments: SD's and SDXL's scheduler by name
    (FLUX runs its flow-matching one), and strength 1 for SDXL (diffusers' default is 0.9999)."""
    if config.preset not in FAMILY_PRESETS:
        return dict(scheduler=config.scheduler)
    return {} if is_flux(config.preset) else dict(scheduler=config.scheduler, strength=1.0)


def _count(preset: str, height: int, width: int, config: ProfileConfig, decoders) -> dict:
    if preset in FAMILY_PRESETS:
        return count_family_job(preset, height, width, batch=config.batch, steps=config.steps, decoders=decoders,
                                guidance_scale=config.guidance_scale, scheduler=config.scheduler)
    return count_job(preset, height, width, batch=config.batch, steps=config.steps, decoders=decoders,
                     guidance_scale=config.guidance_scale, scheduler=config.scheduler)


def denoiser_batch(config: ProfileConfig) -> int:
    """Latents per denoiser call: doubled under CFG (FLUX's distilled guidance has none)."""
    cfg = config.guidance_scale > 1 and not (config.preset in FAMILY_PRESETS and is_flux(config.preset))
    return config.batch * (2 if cfg else 1)


def count_for_profile(config: ProfileConfig, log=print) -> tuple[dict, dict]:
    """The FLOPs of the profiled job (decoders that are presets only) and the matmul peak probe."""

    known = tuple(d for d in config.decoders if d in PRESETS or d in PRESET_ALIASES)
    log(f"counting FLOPs ({config.preset}, {config.height}x{config.width}, meta device) and probing the "
        f"{config.dtype} matmul peak ...")
    job = _count(config.preset, config.height, config.width, config, known)
    job["projection"] = project(job)
    return job, probe_peak(config.device, parse_dtype(config.dtype, config.device))


def flop_table_job(config: ProfileConfig, accounting: dict | None = None) -> dict:
    """The counted decoder-versus-diffusion table the CLI prints next to every profile (``make run``):
    SD 1.5 shapes at the profile's size and steps, or at 512x512 and 50 steps when the profiled
    preset is tiny (its toy networks say nothing about real costs). Counting only, seconds."""

    if config.preset in FAMILY_PRESETS:  # the real family preset at 1024x1024, whatever was measured
        real = REAL_PRESET[config.preset]
        if accounting is not None and config.preset == real:
            job = dict(accounting)
        else:
            names = tuple(d for d in config.decoders if d in REAL_DECODERS[real]) or REAL_DECODERS[real]
            same = config.preset == real
            steps = config.steps if same else {"flux-fill": 28, "sdxl": 30}[real]  # FLUX dev's and SDXL's usual
            job = count_family_job(real, config.height if same else 1024, config.width if same else 1024,
                                   batch=config.batch, steps=steps, decoders=names,
                                   guidance_scale=config.guidance_scale, scheduler=config.scheduler)
    elif accounting is not None and config.preset == "sd15":
        job = dict(accounting)
    else:
        real = config.preset == "sd15"
        names = tuple(d for d in config.decoders if (d in PRESETS or d in PRESET_ALIASES) and d != "tiny")
        job = count_job("sd15", config.height if real else 512, config.width if real else 512, batch=config.batch,
                        steps=config.steps if real else 50, decoders=names or DEFAULT_DECODERS,
                        guidance_scale=config.guidance_scale, scheduler=config.scheduler)
    job["projection"] = project(job)
    return job


def flops_only_report(config: ProfileConfig) -> dict:
    """``asymvq profile --flops-only``: the job's FLOPs per stage, nothing run (schema as ``profile``,
    ``kind`` "flops-only", no stages, no device measurements)."""

    job = _count(config.preset, config.height, config.width, config, config.decoders)
    job["projection"] = project(job)
    env = environment(torch.device("cpu"))
    return {
        "schema": SCHEMA, "kind": "flops-only",
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "versions": env["versions"], "platform": env["platform"],
        "config": asdict(config) | {"decoders": list(config.decoders)},
        "stages": {}, "flops": dict(job["flops"]),
        "flop_accounting": {k: v for k, v in job.items() if k != "flops"},
        "peak": None, "flop_table": job,
    }


def _stage_flops(report: dict, accounting: dict) -> dict[str, int]:
    """Span name -> FLOPs of one sample of it (what one entry of samples_ms measured)."""

    f, steps = accounting["flops"], accounting["steps"]
    cfg = accounting["unet_batch"] > accounting["batch"]
    one = (accounting.get("denoiser_labels") or unet_label(steps, cfg))[0]
    text = sum(f[k] for k in ("CLIP", "CLIP-G", "T5") if k in f) or None  # every encoder of the text span
    out = {SPAN_TEXT: text, SPAN_VAE_ENCODE: f.get("VAE-Enc"), SPAN_UNET: f.get(one),
           SPAN_SCHEDULER: f.get(scheduler_label(steps)[0]), SPAN_DIFFUSION: accounting["diffusion_flops"]}
    for name in report["config"]["decoders"]:
        out[f"{SPAN_DECODE}/{name}"] = f.get(f"Decoder {name}")
    return {k: v for k, v in out.items() if v is not None}


def add_flops(report: dict, accounting: dict, peak: dict | None) -> dict:
    """Attach the FLOP accounting to a report: ``flops``, ``flop_accounting``, ``peak`` and, per
    measured stage, ``flops`` (of one sample), ``achieved_flops_per_s`` and ``peak_share``."""
    report["flops"] = dict(accounting["flops"])
    report["flop_accounting"] = {k: v for k, v in accounting.items() if k != "flops"}
    report["peak"] = peak
    for span, n in _stage_flops(report, accounting).items():
        stage = report["stages"].get(span)
        if stage is None:
            continue
        rate = n / (stage["median_ms"] / 1e3) if stage["median_ms"] > 0 else None
        stage["flops"] = n
        stage["achieved_flops_per_s"] = rate
        stage["peak_share"] = rate / peak["flops_per_s"] if rate is not None and peak else None
    return report


def build_report(config: ProfileConfig, samples: dict, peaks: dict, memory_kind: str, timer_method: str,
                 device: torch.device, decoder_params: dict) -> dict:
    """Stage statistics plus the decoder-versus-diffusion summary, as a JSON-able dict."""
    stages = {}
    for name, values in samples.items():
        per = "step" if name in PER_STEP else "run"
        stages[name] = {"per": per, **summarize(values), "samples_ms": [round(v, 4) for v in values]}
        if name in peaks:
            stages[name]["memory"] = peaks[name]
    steps = config.steps
    diffusion = stages[SPAN_DIFFUSION]["median_ms"]
    unet_total = steps * stages[SPAN_UNET]["median_ms"]
    summary = {}
    for name in config.decoders:
        decode = stages[f"{SPAN_DECODE}/{name}"]["median_ms"]
        pipeline = diffusion + decode
        summary[name] = {
            "decode_median_ms": decode,
            "pipeline_median_ms": pipeline,
            "decode_share": decode / pipeline,
            "decode_vs_unet_total": decode / unet_total,
            "images_per_s": config.batch * 1e3 / pipeline,
            "memory": peaks.get(f"{SPAN_DECODE}/{name}"),
            "params": decoder_params.get(name),
        }
    return {
        "schema": SCHEMA, "kind": "measured",
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        **environment(device),
        "config": asdict(config) | {"decoders": list(config.decoders)},
        "timer": timer_method,
        "memory": memory_kind,
        "stages": stages,
        "diffusion": {"median_ms": diffusion, "unet_total_median_ms": unet_total,
                      "steps": steps, "unet_batch": denoiser_batch(config)},
        "decoders": summary,
        # schema 2: filled by add_flops (--flops) and the CLI's FLOP table; null when not counted
        "flops": None, "flop_accounting": None, "peak": None, "flop_table": None,
    }
