"""FLOPs of every stage of the inpainting job, counted at real sizes in seconds and without weights.

Each network is built under ``torch.device("meta")`` (shapes only: no memory, no weights, no
arithmetic) and run once under ``torch.utils.flop_counter.FlopCounterMode``, which adds up the
FLOPs of matmuls and convolutions (1 multiply-add = 2 FLOP). Elementwise work (norms,
activations, blends, softmax) is not counted, the usual convention.

Attention is counted explicitly. The counter has formulas for the CUDA SDPA kernels and for the
math path (two ``bmm``), but none for ``_scaled_dot_product_flash_attention_for_cpu``, the kernel
real CPU tensors take, so ``ATTENTION_FORMULAS`` registers one: 4 * B * heads * Lq * Lk * d
(QK^T and the weighted sum of V). On the meta device SDPA takes the math path, which gives the
same number; tests check both, and that the attention share equals that formula.

What a stage is matches what the profiler measures as one sample of it (see docs/profiling.md):
one prompt, one source image and mask, ``batch`` images per prompt:

- ``CLIP``: both text-encoder calls of a run (prompt and negative prompt, one sequence each);
- ``VAE-Enc``: the masked-image encode (one image);
- ``UNet step (CFG)``: one UNet call on the CFG batch (2 x batch latents); ``UNet x N (CFG)``: N of them;
- ``Scheduler step`` / ``Scheduler x N``: the scheduler's elementwise arithmetic, counted by running
  the real scheduler on the latents (one FLOP per output element of each pointwise op);
- ``Decoder <name>``: one decode of ``batch`` latents with the source image and mask.

    from asymvq.profiling.flops import count_job
    job = count_job("sd15", 512, 512, decoders=("vanilla", "x1.5"), steps=50)
    job["flops"]["Decoder x1.5"] / 1e12        # 8.12 TFLOP
"""
from __future__ import annotations

import contextlib
import copy
import functools
import time

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from ..models.component_modules import VaeEncoderComponent
from ..models.config import preset_config
from ..models.decoder import AsymmetricDecoder
from ..models.sd_networks import PRESET_SHAPES, SCHEDULER_CONFIG, build_text_encoder, build_unet, build_vae
from ..pipeline.schedulers import make_scheduler, step_kwargs

METHOD = ("torch.utils.flop_counter.FlopCounterMode on the meta device (no weights); matmul and convolution "
          "FLOPs, 1 multiply-add = 2 FLOP; attention counted explicitly as 4*B*heads*Lq*Lk*d; elementwise ops "
          "not counted, except the scheduler's (1 FLOP per output element of each pointwise op)")

# Datasheet dense fp16/bf16 tensor-core peaks (without sparsity), FLOP/s. A projection from these
# is a floor: time = FLOPs / peak, no memory traffic, no launch gaps, no imperfect tiling.
GPU_PEAKS = {"H100 SXM": 989e12, "H200": 989e12, "A100 80GB": 312e12}


def _flop_counter():
    """``torch.utils.flop_counter``, imported on the first count: it imports torch._inductor, which imports
    triton when installed, and ``import asymvq`` / ``asymvq --help`` must load no optional toolchain."""
    import torch.utils.flop_counter

    return torch.utils.flop_counter


def _sdpa_cpu_flop(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    """The CPU flash-attention kernel: the same FLOPs as the math path (QK^T and P @ V)."""
    return _flop_counter().sdpa_flop_count(query_shape, key_shape, value_shape)


ATTENTION_FORMULAS = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_cpu_flop}


def attention_flops(q_shape, k_shape, v_shape) -> int:
    """4 * B * heads * Lq * Lk * d for q (B, heads, Lq, d), k (B, heads, Lk, d), v (B, heads, Lk, dv)."""
    *batch, lq, d = q_shape
    lk, dv = k_shape[-2], v_shape[-1]
    n = 1
    for b in batch:
        n *= b
    return 2 * n * lq * lk * d + 2 * n * lq * lk * dv


class _Attention(TorchFunctionMode):
    """Sees every ``F.scaled_dot_product_attention`` call: adds up its FLOPs by the formula and,
    with ``skip=True``, replaces it by a free stand-in of the right shape (to count without it)."""

    def __init__(self, skip: bool = False):
        super().__init__()
        self.skip, self.flops, self.calls = skip, 0, 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention:
            q, k, v = (args + tuple(kwargs.get(n) for n in ("query", "key", "value")[len(args):]))[:3]
            self.flops += attention_flops(q.shape, k.shape, v.shape)
            self.calls += 1
            if self.skip:
                return q.new_empty((*q.shape[:-1], v.shape[-1]))
        return func(*args, **kwargs)


def count(fn, *args, attention: bool = True, **kwargs) -> dict:
    """FLOPs of ``fn(*args, **kwargs)``: {"flops", "attention_flops", "attention_calls", "by_op"}.

    ``attention=False`` counts the same call with every SDPA replaced by a free stand-in.
    """
    counter = _flop_counter().FlopCounterMode(display=False, custom_mapping=ATTENTION_FORMULAS)
    attn = _Attention(skip=not attention)
    with torch.no_grad(), counter, attn:
        fn(*args, **kwargs)
    by_op = {str(op): int(n) for op, n in counter.get_flop_counts().get("Global", {}).items()}
    return {"flops": int(counter.get_total_flops()), "attention_flops": attn.flops if attention else 0,
            "attention_calls": attn.calls, "by_op": by_op}


class _Pointwise(TorchDispatchMode):
    """One FLOP per output element of each pointwise aten op (add, mul, sqrt, ...)."""

    def __init__(self):
        super().__init__()
        self.flops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if torch.Tag.pointwise in func.tags and isinstance(out, torch.Tensor) and out.is_floating_point():
            self.flops += out.numel()
        return out


# -- the networks, on the meta device --------------------------------------------------------
@contextlib.contextmanager
def _meta():
    with torch.device("meta"):
        yield


def _decoder(name: str):

    with _meta():
        return AsymmetricDecoder(preset_config(name)).eval()


def count_decoder(name: str, height: int, width: int, batch: int = 1, *, image_batch: int = 1,
                  condition: bool | None = None, attention: bool = True) -> dict:
    """One decode of ``batch`` latents at ``height`` x ``width`` pixels by decoder preset ``name``;
    with the source image and mask (``image_batch`` of them) when the decoder has a condition branch."""
    dec = _decoder(name)
    f = dec.config.latent_space.vae_scale_factor
    cond = dec.condition_encoder is not None if condition is None else condition
    with _meta():
        latents = torch.empty(batch, dec.config.latent_channels, height // f, width // f)
        image = torch.empty(image_batch, 3, height, width) if cond else None
        mask = torch.empty(image_batch, 1, height, width) if cond else None
    return count(dec.decode_core, latents, image, mask, attention=attention)


def count_unet(preset: str, height: int, width: int, unet_batch: int, *, in_channels: int = 9,
               attention: bool = True) -> dict:
    """One UNet call on ``unet_batch`` latents (2 x images under CFG)."""

    shapes = PRESET_SHAPES[preset]
    with _meta():
        unet = build_unet(preset, in_channels=in_channels)
        f = shapes["latent_space"].vae_scale_factor
        sample = torch.empty(unet_batch, in_channels, height // f, width // f)
        t = torch.empty(unet_batch)
        text = torch.empty(unet_batch, shapes["text_len"], shapes["text_dim"])
    return count(unet, sample, t, text, return_dict=False, attention=attention)


def count_text_encoder(preset: str, sequences: int = 1, *, attention: bool = True) -> dict:
    """One CLIP text-encoder call on ``sequences`` prompts of the preset's 77 tokens."""

    shapes = PRESET_SHAPES[preset]
    with _meta():
        encoder = build_text_encoder(preset)
        ids = torch.zeros(sequences, shapes["text_len"], dtype=torch.long)
    return count(encoder, ids, return_dict=False, attention=attention)


def count_vae_encoder(preset: str, height: int, width: int, batch: int = 1, *, attention: bool = True) -> dict:
    """One VAE encode (encoder + quant_conv: the moments) of ``batch`` images."""

    with _meta():
        enc = VaeEncoderComponent(build_vae(preset))
        image = torch.empty(batch, 3, height, width)
    return count(enc, image, attention=attention)


def count_scheduler(name: str, height: int, width: int, batch: int = 1, steps: int = 50, *,
                    latent_channels: int = 4, vae_scale_factor: int = 8) -> int:
    """Elementwise FLOPs of one ``scheduler.step`` (the median over the run's steps), on real latents.

    Real (tiny) CPU tensors, not meta: the scheduler is a few dozen elementwise ops on the latents.
    """

    scheduler = make_scheduler(name, SCHEDULER_CONFIG)
    scheduler.set_timesteps(steps)
    g = torch.Generator().manual_seed(0)
    shape = (batch, latent_channels, height // vae_scale_factor, width // vae_scale_factor)
    latents = torch.randn(shape, generator=g)
    kwargs = step_kwargs(scheduler, g, 0.0)
    per_step = []
    for t in scheduler.timesteps:
        noise = torch.randn(shape, generator=g)
        mode = _Pointwise()
        with torch.no_grad(), mode:
            latents = scheduler.step(noise, t, latents, **kwargs, return_dict=False)[0]
        per_step.append(mode.flops)
    per_step.sort()
    return per_step[len(per_step) // 2]


# -- the whole job ---------------------------------------------------------------------------
def unet_label(steps: int, cfg: bool = True) -> tuple[str, str]:
    """The labels of one UNet call and of all of them, as the profile table prints them."""
    suffix = " (CFG)" if cfg else ""
    return f"UNet step{suffix}", f"UNet x {steps}{suffix}"


def denoiser_total_label(job: dict) -> str:
    """The label of all denoiser calls of a counted job: its own (FLUX's transformer) or the UNet's."""
    labels = job.get("denoiser_labels")
    return labels[1] if labels else unet_label(job["steps"], job["unet_batch"] > job["batch"])[1]


def scheduler_label(steps: int) -> tuple[str, str]:
    return "Scheduler step", f"Scheduler x {steps}"


def count_job(preset: str = "sd15", height: int = 512, width: int = 512, *, batch: int = 1, steps: int = 50,
              decoders=("vanilla", "base", "x1.5", "x2"), guidance_scale: float = 7.5, scheduler: str = "ddim",
              in_channels: int = 9) -> dict:
    """Every stage of the profile's job, counted (see ``_count_job``); the same question is counted
    once per process (a fresh copy is returned each time)."""
    job = _count_job_cached(preset, int(height), int(width), int(batch), int(steps), tuple(decoders),
                            float(guidance_scale), str(scheduler), int(in_channels))
    return copy.deepcopy(job)


@functools.lru_cache(maxsize=16)
def _count_job_cached(*args) -> dict:
    return _count_job(*args)


def _count_job(preset: str, height: int, width: int, batch: int, steps: int, decoders: tuple,
               guidance_scale: float, scheduler: str, in_channels: int) -> dict:
    """Every stage of the profile's job, counted. Returns a JSON-able dict:

    ``flops``: stage label (as printed) -> FLOPs of one call of it (and the UNet and scheduler for
    all steps); ``attention_flops``: the attention part of each; ``decoders``: per decoder, its
    FLOPs, the whole job's (CLIP + VAE-Enc + steps x (UNet + scheduler) + decode) and its share;
    ``count_s``: how long the counting took.
    """

    if preset not in PRESET_SHAPES:
        raise ValueError(f"preset must be one of {list(PRESET_SHAPES)}, got {preset!r}")
    if height % 8 or width % 8 or height <= 0 or width <= 0:
        raise ValueError(f"size: expected positive multiples of 8, got {height}x{width}")
    t0 = time.perf_counter()
    cfg = guidance_scale > 1
    unet_batch = batch * (2 if cfg else 1)
    one_unet, all_unet = unet_label(steps, cfg)
    one_sched, all_sched = scheduler_label(steps)
    parts = {
        "CLIP": _sum(count_text_encoder(preset, 1), 2 if cfg else 1),  # prompt and negative prompt
        "VAE-Enc": count_vae_encoder(preset, height, width, 1) if in_channels == 9 else None,
        one_unet: count_unet(preset, height, width, unet_batch, in_channels=in_channels),
    }
    parts = {k: v for k, v in parts.items() if v is not None}
    flops = {k: v["flops"] for k, v in parts.items()}
    attention = {k: v["attention_flops"] for k, v in parts.items()}
    flops[all_unet], attention[all_unet] = steps * flops[one_unet], steps * attention[one_unet]
    shapes = PRESET_SHAPES[preset]
    latents = shapes["latent_space"]
    sched = count_scheduler(scheduler, height, width, batch, steps, latent_channels=latents.channels,
                            vae_scale_factor=latents.vae_scale_factor)
    flops[one_sched], flops[all_sched] = sched, steps * sched
    attention[one_sched] = attention[all_sched] = 0
    diffusion = sum(flops[k] for k in ("CLIP", "VAE-Enc", all_unet, all_sched) if k in flops)
    summary = {}
    for name in decoders:
        d = count_decoder(name, height, width, batch, image_batch=1 if in_channels == 9 else 0,
                          condition=None if in_channels == 9 else False)
        label = f"Decoder {name}"
        flops[label], attention[label] = d["flops"], d["attention_flops"]
        summary[name] = {"flops": d["flops"], "job_flops": diffusion + d["flops"],
                         "share_of_job": d["flops"] / (diffusion + d["flops"]),
                         "vs_unet_total": d["flops"] / flops[all_unet]}
    return {
        "preset": preset, "height": height, "width": width, "batch": batch, "steps": steps,
        "unet_batch": unet_batch, "scheduler": scheduler, "method": METHOD,
        "flops": flops, "attention_flops": attention, "diffusion_flops": diffusion, "decoders": summary,
        "count_s": round(time.perf_counter() - t0, 2),
    }


def _sum(c: dict, times: int) -> dict:
    return {"flops": times * c["flops"], "attention_flops": times * c["attention_flops"]}


def project(job: dict, peaks: dict | None = None) -> dict:
    """A floor per named GPU: time = FLOPs / datasheet peak, for each decode and the whole job.

    The decoder's share of the job is the same on every GPU at the floor (both scale with 1/peak).
    """
    peaks = GPU_PEAKS if peaks is None else peaks
    out = {}
    for gpu, peak in peaks.items():
        out[gpu] = {"peak_flops_per_s": peak, "decoders": {
            name: {"decode_ms": 1e3 * d["flops"] / peak, "job_ms": 1e3 * d["job_flops"] / peak,
                   "unet_total_ms": 1e3 * job["flops"][denoiser_total_label(job)] / peak,
                   "share_of_job": d["share_of_job"]}
            for name, d in job["decoders"].items()}}
    return {"note": "a floor, not a measurement: FLOPs / datasheet dense fp16/bf16 peak (no sparsity); "
                    "real runs are slower (memory traffic, launch gaps, imperfect tiling)",
            "gpus": out}


# -- the machine's peak, probed --------------------------------------------------------------
def probe_peak(device="cpu", dtype=torch.float32, *, size: int | None = None, seconds: float = 0.5) -> dict:
    """Best achieved FLOP/s of a square matmul at ``dtype`` on ``device``: a probe, not a spec.

    CPU: n = 1024 and 2048, the best kept (1024 fits the cache and warms the thread pool; AMX bf16
    reached about 1.1 TFLOP/s at 1024 and 1.9-2.0 at 2048 on this project's 2-core Xeon, fp32
    about the same at both). CUDA: n = 8192, timed with CUDA events. ``size=`` probes that one n.
    Runs repeated matmuls for about ``seconds`` per size after one warm-up and keeps the fastest.
    """
    device = torch.device(device)
    cuda = device.type == "cuda"
    sizes = (size,) if size else (8192,) if cuda else (1024, 2048)
    g = torch.Generator(device=device).manual_seed(0)
    best_rate, best_n, total_runs = 0.0, sizes[0], 0
    for n in sizes:
        a = torch.randn(n, n, generator=g, device=device).to(dtype)
        b = torch.randn(n, n, generator=g, device=device).to(dtype)
        best, runs = float("inf"), 0
        torch.mm(a, b)  # warm-up
        start = time.perf_counter()
        while runs < 3 or time.perf_counter() - start < seconds:
            if cuda:
                e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                e0.record()
                torch.mm(a, b)
                e1.record()
                e1.synchronize()
                s = e0.elapsed_time(e1) / 1e3
            else:
                t = time.perf_counter()
                torch.mm(a, b)
                s = time.perf_counter() - t
            best, runs = min(best, s), runs + 1
        total_runs += runs
        if 2 * n ** 3 / best > best_rate:
            best_rate, best_n = 2 * n ** 3 / best, n
    return {"kind": "probe", "op": f"matmul {best_n}x{best_n}x{best_n}", "device": device.type,
            "dtype": str(dtype).replace("torch.", ""), "threads": torch.get_num_threads(), "runs": total_runs,
            "flops_per_s": best_rate,
            "note": "the machine's achieved matmul peak at this precision, measured at start-up: a probe, not a spec"}
