"""The ``asymvq`` command line: ``profile``, ``inpaint``, ``decode``, ``serve`` and ``export``.

Errors a user can fix (missing files, wrong formats, mismatched sizes, a missing extra) print
one line and exit 1; ``--debug`` anywhere on the line shows the traceback instead. The project's
modules are imported here at the top (diffusers, matplotlib and the optional toolchains load
only when a command needs them), so ``asymvq --help`` costs about a torch import.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Optional

import torch
import typer
from tqdm.auto import tqdm

from .cli_export import register as _register_export
from .decode_modes import as_cli_error, cli_decode_options
from .engines.loader import BACKENDS
from .engines.manifest import read_manifest
from .images import load_image, postprocess, prepare_image_and_mask
from .inpaint_run import check_same_size, run_inpaint
from .job_rules import ARGS as JOB_ARGS
from .job_rules import check_job
from .latents_io import load_latents
from .models import PRESETS
from .models.checkpoints import load_decoder
from .models.config import PRESET_ALIASES
from .models.devices import DTYPES, parse_device, parse_dtype
from .models.extras import missing_extra
from .models.sd_networks import SD_PRESETS
from .models.sources import random_decoder
from .out_path import check_image_out
from .pipeline import InpaintPipeline
from .profiler import ProfileConfig, default_config, flop_table_job, flops_only_report
from .profiler import profile as run_profile
from .report import format_flops_only, format_table, write_json
from .report import plot as draw
from .schedulers import SCHEDULER_ALIASES, SCHEDULERS
from .serve_limits import BODY_TIMEOUT_S, MAX_HEADER_BYTES, MAX_QUEUE, RAY_MAX_QUEUE, SHUTDOWN_TIMEOUT_S

app = typer.Typer(
    name="asymvq",
    help="Stable Diffusion inpainting with the Asymmetric VQGAN decoder: profile, inpaint, decode.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,  # main() prints one line unless --debug
)

SCHEDULER_HELP = "ddim, pndm, euler or dpm++"
CLI_NAMES = {name: "--" + name.replace("_", "-") for name in JOB_ARGS}  # the job's values as `inpaint` names them
BACKEND_HELP = ("With --engines: onnxruntime, openvino, tensorrt, aoti, torch or torch-compile (default: TensorRT on "
                "CUDA when built, OpenVINO on the CPU when the directory has its IR, else ONNX Runtime).")
# The decode modes of `inpaint` and `decode` (docs/decoder.md), one definition for both commands.
TILE_OPTION = typer.Option(None, help="Tiled decode: tiles of N latent pixels (8N image pixels), memory bounded by the "
                           "tile (docs/decoder.md). Torch decoders only.")
OVERLAP_OPTION = typer.Option(None, help="Latent pixels shared by neighbouring tiles (default: the receptive field, exact).")
DECODE_REGION_OPTION = typer.Option(None, "--decode-region", help="'mask': decode only the mask's box (plus --margin), "
                                    "copy the rest from the source; 'full' (default).")
MARGIN_OPTION = typer.Option(None, help="Latent pixels of context around the mask's box (default 4).")
PRECISION_HELP = ("With --engines --backend openvino: the precision OpenVINO computes in, fp32 or bf16 (default: bf16 "
                  "where the CPU has native bf16, avx512_bf16 or AMX; fp32 otherwise). Not the export's precision.")


def engine_choice(backend: Optional[str], precision: Optional[str], threads: Optional[int] = None) -> dict:
    """``from_engines`` keyword arguments for --backend / --precision (and --threads for exported engines)."""
    if backend is not None and backend not in BACKENDS:
        raise ValueError(f"--backend: expected one of {list(BACKENDS)}, got {backend!r}")
    options: dict = {"backend": backend}
    if precision is not None:
        if backend != "openvino":
            raise ValueError("--precision: chooses OpenVINO's inference precision; use it with --backend openvino")
        if precision not in ("fp32", "bf16"):
            raise ValueError(f"--precision: expected fp32 or bf16, got {precision!r}")
        options["precision"] = precision
    if threads is not None and backend in ("onnxruntime", "openvino"):
        options["threads"] = threads
    return options


@app.callback()
def _root(debug: bool = typer.Option(False, "--debug", help="On errors, show the full traceback (accepted anywhere).")):
    """asymvq: the runtime for SD inpainting with asymmetric decoders."""


def parse_size(size: str) -> tuple[int, int]:
    """'512x768' -> (512, 768) (height x width); '512' -> (512, 512)."""
    parts = size.lower().split("x")
    try:
        h, w = (int(parts[0]), int(parts[0])) if len(parts) == 1 else (int(parts[0]), int(parts[1]))
    except ValueError:
        h = w = -1
    if len(parts) > 2 or h <= 0 or w <= 0 or h % 8 or w % 8:
        raise ValueError(f"--size: expected HxW with positive multiples of 8, e.g. 512x512, got {size!r}")
    return h, w


# -- profile ----------------------------------------------------------------------------------
@app.command()
def profile(
    preset: Optional[str] = typer.Option(None, help="tiny or sd15 (default: tiny on a CPU, sd15 with CUDA)."),
    decoders: Optional[str] = typer.Option(None, help="Comma-separated decoder presets, e.g. vanilla,base,x1.5,x2."),
    steps: Optional[int] = typer.Option(None, help="Denoising steps (default: 10 for tiny, 50 for sd15)."),
    size: Optional[str] = typer.Option(None, help="HxW image size (default: 32x32 for tiny, 512x512 for sd15)."),
    batch: int = typer.Option(1, help="Images per run (the UNet sees 2x this under guidance)."),
    device: Optional[str] = typer.Option(None, help="cpu or cuda (default: cuda when available)."),
    dtype: Optional[str] = typer.Option(None, help="fp32, fp16 or bf16 (default: fp16 on CUDA, fp32 on CPU)."),
    warmup: Optional[int] = typer.Option(None, help="Warm-up runs, not measured."),
    repeats: Optional[int] = typer.Option(None, help="Measured runs (min, median and p90 are over these)."),
    scheduler: str = typer.Option("ddim", help=SCHEDULER_HELP),
    guidance: float = typer.Option(7.5, help="Classifier-free guidance scale (> 1 doubles the UNet batch)."),
    seed: int = typer.Option(0, help="Seed of the random weights and of the noise."),
    kernels: str = typer.Option("torch", help="Decoder kernels: torch or triton."),
    nvtx: bool = typer.Option(False, help="Mark every stage with an NVTX range (GPU)."),
    threads: Optional[int] = typer.Option(None, help="CPU threads for torch (default: torch's choice; 1 on a busy machine)."),
    json_path: Path = typer.Option(Path("out/profile.json"), "--json", help="Where to write the JSON report."),
    plot: Path = typer.Option(Path("out/profile.png"), "--plot", help="Where to write the PNG chart."),
    engines: Optional[Path] = typer.Option(None, help="Engines directory from `asymvq export`: profile its engines "
                                           "(ONNX Runtime, TensorRT) and its decoder instead of the presets."),
    backend: Optional[str] = typer.Option(None, help=BACKEND_HELP),
    precision: Optional[str] = typer.Option(None, help=PRECISION_HELP),
    flops: bool = typer.Option(False, "--flops", help="Also count every stage's FLOPs (meta device, seconds), probe "
                               "the matmul peak at start-up, and show FLOP, FLOP/s and % of that peak per stage."),
    flops_only: bool = typer.Option(False, "--flops-only", help="Only count FLOPs per stage (meta device, no weights, "
                                    "seconds): nothing runs; writes --json, no chart."),
    flop_table: bool = typer.Option(True, "--flop-table/--no-flop-table", help="Append the counted decoder-versus-"
                                    "diffusion table and its GPU floor (SD 1.5; 512x512, 50 steps for preset tiny)."),
):
    """Per-stage latency and memory of SD inpainting, and what each decoder costs next to diffusion."""
    # 1. the profile's configuration: the built-in default, the engines directory's, then the options
    cuda = (device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda")
    base = default_config(cuda)
    if engines is not None:  # the directory decides the shapes, precision and the one decoder
        manifest = read_manifest(engines)
        preset = preset or ("tiny" if manifest["source"]["preset"] == "tiny" else "sd15")
        if dtype not in (None, manifest["precision"]):
            raise ValueError(f"--dtype: {engines} holds {manifest['precision']} engines, got --dtype {dtype}")
        dtype, decoders = manifest["precision"], decoders or engines.name
    preset = preset or base.preset
    native = {"tiny": ProfileConfig.height, "sd15": 512}.get(preset, ProfileConfig.height)
    height, width = parse_size(size) if size else (native, native)
    config = ProfileConfig(
        preset=preset,
        decoders=tuple(d.strip() for d in decoders.split(",") if d.strip()) if decoders else base.decoders,
        steps=steps if steps is not None else (50 if preset == "sd15" else 10),
        height=height, width=width, batch=batch, device=device or base.device, dtype=dtype or base.dtype,
        warmup=warmup if warmup is not None else base.warmup, repeats=repeats if repeats is not None else base.repeats,
        guidance_scale=guidance, scheduler=scheduler, seed=seed, nvtx=nvtx, kernels=kernels, flops=flops,
    )
    _check_profile_config(config, check_decoders=engines is None)
    # 2. counting only: no networks built with weights, nothing timed
    if flops_only:
        if engines is not None:
            raise ValueError("--flops-only: counts the preset networks; drop --engines")
        report = flops_only_report(config)
        typer.echo(format_flops_only(report))
        typer.echo(f"wrote {write_json(report, json_path)}")
        return
    # 3. threads, and the pipeline of an engines directory (the presets are built by the profiler)
    if threads is not None:
        if threads < 1:
            raise ValueError(f"--threads: expected a positive integer, got {threads}")
        torch.set_num_threads(threads)
    pipeline = None
    if engines is not None:
        pipeline = InpaintPipeline.from_engines(engines, device=config.device, scheduler=config.scheduler,
                                                **engine_choice(backend, precision, threads))
    elif backend is not None or precision is not None:
        raise ValueError("--backend / --precision: they choose how an engines directory runs; give --engines DIR")
    # 4. the measured runs
    report = _run_profile(config, pipeline)
    # 5. the counted decoder-versus-diffusion table (meta device: seconds), next to the measured run
    if flop_table:
        counted = report["flop_accounting"] and {**report["flop_accounting"], "flops": report["flops"]}
        report["flop_table"] = flop_table_job(config, counted)
    # 6. the table, the JSON and the chart
    typer.echo(format_table(report))
    typer.echo(f"wrote {write_json(report, json_path)} and {draw(report, plot)}")


def _check_profile_config(config, check_decoders: bool = True) -> None:
    """Fail on a bad name before minutes of model building, not after."""
    if config.preset not in SD_PRESETS:
        raise ValueError(f"--preset: expected one of {list(SD_PRESETS)}, got {config.preset!r}")
    bad = [d for d in config.decoders if d not in PRESETS and d not in PRESET_ALIASES] if check_decoders else []
    if bad:
        raise ValueError(f"--decoders: unknown decoder presets {bad}; expected names among {sorted(PRESETS)}")
    if config.dtype not in DTYPES:
        raise ValueError(f"--dtype: expected one of {list(DTYPES)}, got {config.dtype!r}")
    if config.scheduler.lower() not in SCHEDULERS and config.scheduler.lower() not in SCHEDULER_ALIASES:
        raise ValueError(f"--scheduler: expected one of {SCHEDULERS}, got {config.scheduler!r}")
    parse_device(config.device)


def _run_profile(config, pipeline=None) -> dict:
    bar = tqdm(total=config.warmup + config.repeats, desc="profiling (warm-up + measured runs)", unit="run")

    def advance(done: int, total: int) -> None:
        bar.update(done - bar.n)

    try:
        return run_profile(config, pipeline=pipeline, progress=advance, log=lambda msg: tqdm.write(msg))
    finally:
        bar.close()


# -- inpaint ----------------------------------------------------------------------------------
def build_pipeline(*, model: Optional[Path], decoder: Optional[Path], device: str, dtype: str, scheduler: str,
                   engines: Optional[Path] = None, preset: Optional[str] = None, backend: Optional[str] = None,
                   precision: Optional[str] = None):
    """The one place a command turns its options into a pipeline (engine directories plug in here).

    ``preset`` (tiny or sd15: seeded random networks, no files) is for demos and the server's tests.
    """
    if preset is not None:
        if model is not None or engines is not None or decoder is not None:
            raise ValueError("--preset: give either --preset or --model/--engines (with --decoder), not both")
        return InpaintPipeline.from_preset(preset, device=device, dtype=dtype, scheduler=scheduler)
    if (model is None) == (engines is None):
        raise ValueError("--model / --engines: give exactly one (a diffusers SD folder, or an `asymvq export` directory)")
    if engines is not None:
        if decoder is not None:
            raise ValueError("--decoder: an engines directory brings its own decoder; re-export with --decoder instead")
        return InpaintPipeline.from_engines(engines, device=device, scheduler=scheduler,
                                            **engine_choice(backend, precision))
    if backend is not None or precision is not None:
        raise ValueError("--backend / --precision: they choose how an engines directory runs; give --engines DIR")

    return InpaintPipeline.from_pretrained(model, decoder=decoder, device=device, dtype=dtype, scheduler=scheduler)


@app.command()
def inpaint(
    preset: Optional[str] = typer.Option(None, help="Or seeded random networks, no files: tiny or sd15 (a demo, not real images)."),
    model: Optional[Path] = typer.Option(None, help="Local diffusers-format SD inpainting folder (unet/, vae/, text_encoder/, ...)."),
    engines: Optional[Path] = typer.Option(None, help="Or an engines directory from `asymvq export` (ONNX Runtime / TensorRT)."),
    decoder: Optional[Path] = typer.Option(None, help="Decoder checkpoint (default: the folder's own VAE decoder)."),
    image: Path = typer.Option(..., help="Source image (png, jpg, ...)."),
    mask: Path = typer.Option(..., help="Mask image, white = area to repaint; same size as the image."),
    prompt: str = typer.Option(..., help="What to paint into the hole."),
    out: Path = typer.Option(..., help="Output image path (.png)."),
    negative_prompt: Optional[str] = typer.Option(None, help="What to steer away from."),
    steps: int = typer.Option(50, help="Denoising steps."),
    seed: int = typer.Option(0, help="Seed of the noise."),
    guidance: float = typer.Option(7.5, help="Classifier-free guidance scale."),
    strength: float = typer.Option(1.0, help="How much of the source to re-noise, in (0, 1]."),
    scheduler: str = typer.Option("ddim", help=SCHEDULER_HELP),
    device: str = typer.Option("cpu", help="cpu or cuda."),
    dtype: str = typer.Option("fp32", help="fp32, fp16 or bf16."),
    backend: Optional[str] = typer.Option(None, help=BACKEND_HELP),
    precision: Optional[str] = typer.Option(None, help=PRECISION_HELP),
    tile: Optional[int] = TILE_OPTION,
    overlap: Optional[int] = OVERLAP_OPTION,
    decode_region: Optional[str] = DECODE_REGION_OPTION,
    margin: Optional[int] = MARGIN_OPTION,
):
    """Inpaint IMAGE where MASK is white, guided by PROMPT, and write OUT."""
    # every value refused now, before minutes of model loading, by the servers' rules (asymvq.job_rules)
    job = check_job(prompt=prompt, negative_prompt=negative_prompt, steps=steps, guidance=guidance, seed=seed,
                    strength=strength, scheduler=scheduler, names=CLI_NAMES)
    check_image_out(out)
    options = cli_decode_options(tile, overlap, decode_region, margin)
    source, hole = load_image(image), load_image(mask, mode="L")
    check_same_size(source, hole, "--mask")  # before minutes of model loading, not after
    pipe = build_pipeline(model=model, decoder=decoder, device=device, dtype=dtype, scheduler=job["scheduler"],
                          engines=engines, preset=preset, backend=backend, precision=precision)
    try:
        run = run_inpaint(pipe, source, hole, job["prompt"], negative_prompt=job["negative_prompt"], steps=job["steps"],
                          guidance=job["guidance"], strength=job["strength"], seed=job["seed"], progress=True,
                          mask_arg="--mask", decode_options=options)
    except ValueError as e:
        raise as_cli_error(e) from None
    _save_images(run.images, out)
    # The paper's Pre_error: how well the kept region survived decoding (lower is better).
    typer.echo(f"Pre_error (MSE on kept pixels, 0-255 units): {run.pre_error:.2f}")


def _save_images(images: list, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    paths = [out] if len(images) == 1 else [out.with_name(f"{out.stem}-{i}{out.suffix}") for i in range(len(images))]
    for img, path in zip(images, paths):
        img.save(path)
        typer.echo(f"wrote {path}")


# -- decode -----------------------------------------------------------------------------------
@app.command()
def decode(
    decoder: Optional[Path] = typer.Option(None, help="Decoder checkpoint (ours, diffusers VAE folder, official .ckpt, SD VAE)."),
    preset: Optional[str] = typer.Option(None, help="Or a seeded random decoder preset: vanilla, base, x1.5, x2 or tiny."),
    latents: Path = typer.Option(..., help="Latents file: .pt, .npy or .safetensors, shape (B, 4, h, w) or (4, h, w)."),
    out: Path = typer.Option(..., help="Output image path (.png)."),
    image: Optional[Path] = typer.Option(None, help="Unmasked source image (8h x 8w), for the condition branch."),
    mask: Optional[Path] = typer.Option(None, help="Mask (white = hole), same size as the image."),
    vae_space: bool = typer.Option(False, "--vae-space", help="Latents are already in VAE space (z / scaling_factor + shift_factor)."),
    device: str = typer.Option("cpu", help="cpu or cuda."),
    dtype: str = typer.Option("fp32", help="fp32, fp16 or bf16."),
    tile: Optional[int] = TILE_OPTION,
    overlap: Optional[int] = OVERLAP_OPTION,
    decode_region: Optional[str] = DECODE_REGION_OPTION,
    margin: Optional[int] = MARGIN_OPTION,
):
    """Decode saved latents (diffusion space unless --vae-space) to an image."""
    check_image_out(out)
    options = cli_decode_options(tile, overlap, decode_region, margin)
    if (decoder is None) == (preset is None):
        raise ValueError("--decoder / --preset: give exactly one (a checkpoint path, or a decoder preset name)")
    lat = load_latents(latents)
    if (image is None) != (mask is None):
        raise ValueError("--image / --mask: give both (inpainting condition) or neither (plain decode)")
    dev, dt = parse_device(device), parse_dtype(dtype)
    pixels = hole = None
    if image is not None:
        want = (8 * lat.shape[-2], 8 * lat.shape[-1])
        source, hole_img = load_image(image), load_image(mask, mode="L")
        for flag, img in (("--image", source), ("--mask", hole_img)):
            if (img.height, img.width) != want:
                raise ValueError(f"{flag}: expected {want[0]}x{want[1]} (HxW, 8x the latents' {lat.shape[-2]}x{lat.shape[-1]}), "
                                 f"got {img.height}x{img.width}")
        pixels, hole, _, _ = prepare_image_and_mask(source, hole_img, None, None)
    dec = load_decoder(decoder, dtype=dt, device=dev) if decoder is not None else random_decoder(preset, dtype=dt, device=dev)
    if lat.shape[1] != dec.config.latent_channels:
        raise ValueError(f"--latents: expected {dec.config.latent_channels} channels for this decoder, got shape {tuple(lat.shape)}")
    lat = lat.to(device=dev, dtype=dt)
    if not vae_space:
        lat = dec.config.latent_space.to_vae(lat)
    if pixels is not None and not dec.config.has_condition:
        raise ValueError("--image / --mask: this decoder has no condition branch (a plain SD decoder); drop them")
    try:
        with torch.inference_mode():
            sample = dec(lat, None if pixels is None else pixels.to(dev, dt), None if hole is None else hole.to(dev, dt),
                         **options)
    except ValueError as e:
        raise as_cli_error(e) from None
    _save_images(postprocess(sample, "pil"), out)


# -- serve ------------------------------------------------------------------------------------
@app.command()
def serve(
    model: Optional[Path] = typer.Option(None, help="Local diffusers-format SD inpainting folder."),
    engines: Optional[Path] = typer.Option(None, help="Or an engines directory from `asymvq export`."),
    decoder: Optional[Path] = typer.Option(None, help="Decoder checkpoint (with --model)."),
    preset: Optional[str] = typer.Option(None, help="Or seeded random networks: tiny or sd15 (default: tiny "
                                         "when neither --model nor --engines is given; a demo, not real images)."),
    scheduler: str = typer.Option("ddim", help=f"Default scheduler of requests that name none: {SCHEDULER_HELP}."),
    device: str = typer.Option("cpu", help="cpu or cuda."),
    dtype: str = typer.Option("fp32", help="fp32, fp16 or bf16."),
    host: str = typer.Option("127.0.0.1", help="Address to listen on (0.0.0.0 exposes it to the network)."),
    port: int = typer.Option(8000, help="TCP port."),
    max_pixels: int = typer.Option(1024 * 1024, help="Largest image accepted, in pixels (W x H)."),
    max_steps: int = typer.Option(150, help="Largest `steps` accepted."),
    max_queue: Optional[int] = typer.Option(None, help="Requests held at once, from the moment their body starts "
                                            "(reading, parsing, queued, running); more are answered 503 "
                                            f"(default: {MAX_QUEUE}, with --ray {RAY_MAX_QUEUE})."),
    body_timeout: float = typer.Option(BODY_TIMEOUT_S, help="Seconds a request's whole body may take to arrive, else 408."),
    shutdown_timeout: float = typer.Option(SHUTDOWN_TIMEOUT_S, help="After SIGTERM or Ctrl-C, seconds open requests may take to "
                                           "finish before they are cancelled."),
    ray: bool = typer.Option(False, "--ray", help="Serve on Ray Serve: ingress, denoise and decode deployments with "
                             "dynamic batching (the `ray` extra; docs/server.md)."),
    address: Optional[str] = typer.Option(None, help="--ray: join this Ray cluster (auto, ray://host:10001); "
                                          "default: start a local Ray."),
    denoise_replicas: int = typer.Option(1, help="--ray: replicas of the denoise stage (CLIP, VAE encoder, UNet)."),
    decode_replicas: int = typer.Option(1, help="--ray: replicas of the decode stage (asymmetric decoder)."),
    gpus_per_denoise: float = typer.Option(0.0, help="--ray: GPUs per denoise replica (fractions share a GPU)."),
    gpus_per_decode: float = typer.Option(0.0, help="--ray: GPUs per decode replica."),
    cpus_per_denoise: float = typer.Option(1.0, help="--ray: CPUs per denoise replica (also its torch threads)."),
    cpus_per_decode: float = typer.Option(1.0, help="--ray: CPUs per decode replica (also its torch threads)."),
    max_batch: int = typer.Option(8, help="--ray: most requests in one batch, per stage."),
    batch_wait_ms: float = typer.Option(20.0, help="--ray: how long a stage waits to fill a batch."),
    backend: Optional[str] = typer.Option(None, help=BACKEND_HELP),
    precision: Optional[str] = typer.Option(None, help=PRECISION_HELP),
):
    """Serve POST /v1/inpaint, GET /healthz and GET /metrics over HTTP (docs/server.md): one request at a
    time in this process, or with --ray on Ray Serve (a stage per deployment, dynamic batching)."""
    if ray:
        return _serve_ray(locals())
    if address is not None:
        raise ValueError("--address: joins a Ray cluster; add --ray")

    try:
        import uvicorn  # defers the server extra

        from .server import create_app  # defers the server extra (fastapi)
    except ImportError as e:
        raise missing_extra("server", "asymvq serve", e) from None

    if preset is None and model is None and engines is None and decoder is None:
        preset = "tiny"
    source = f"preset:{preset}" if preset else str(model or engines)
    pipe = build_pipeline(model=model, decoder=decoder, device=device, dtype=dtype, scheduler=scheduler,
                          engines=engines, preset=preset, backend=backend, precision=precision)
    app_ = create_app(pipe, max_pixels=max_pixels, max_steps=max_steps, source=source, max_queue=max_queue or MAX_QUEUE,
                      body_timeout_s=body_timeout)
    # h11, not httptools: h11 bounds what it buffers of a request line and headers (httptools takes a
    # 1 MB header); the app answers 431 past MAX_HEADER_BYTES, h11 drops the connection past 4x that
    uvicorn.run(app_, host=host, port=port, workers=1, http="h11", h11_max_incomplete_event_size=4 * MAX_HEADER_BYTES,
                timeout_graceful_shutdown=shutdown_timeout)


def _serve_ray(opts: dict) -> None:
    """``asymvq serve --ray``: the same HTTP API on Ray Serve (asymvq.ray_serve)."""
    try:
        from .ray_serve import RayServeConfig, serve_forever  # defers the ray extra
    except ImportError as e:
        raise missing_extra("ray", "asymvq serve --ray", e) from None
    names = ("preset", "model", "decoder", "engines", "backend", "precision", "scheduler", "device", "dtype", "denoise_replicas",
             "decode_replicas", "gpus_per_denoise", "gpus_per_decode", "cpus_per_denoise", "cpus_per_decode",
             "max_batch", "batch_wait_ms", "max_pixels", "max_steps")
    cfg = RayServeConfig(**{k: (str(opts[k]) if isinstance(opts[k], Path) else opts[k]) for k in names},
                         **({"max_queue": opts["max_queue"]} if opts["max_queue"] is not None else {}),
                         body_timeout_s=opts["body_timeout"], shutdown_timeout_s=opts["shutdown_timeout"])
    if cfg.preset is not None and (cfg.model or cfg.engines or cfg.decoder):
        raise ValueError("--preset: give either --preset or --model/--engines (with --decoder), not both")
    serve_forever(cfg, host=opts["host"], port=opts["port"], address=opts["address"],
                  ready=lambda url: typer.echo(f"asymvq serve --ray: serving on {url} (Ctrl-C stops)"))


# -- export: its own file (runtime/cli_export.py), registered here --------------------------
_register_export(app)


# -- entry point ------------------------------------------------------------------------------
def main(argv: Optional[list[str]] = None) -> None:
    """Console entry point: one-line errors unless ``--debug``."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    args = [a for a in args if a != "--debug"]
    if not debug:
        # diffusers/transformers advice (accelerate, dtype casts) and weight-loading bars drown the output;
        # env vars, because importing the libraries here would slow down --help
        for var, value in (("DIFFUSERS_VERBOSITY", "error"), ("TRANSFORMERS_VERBOSITY", "error"),
                           ("HF_HUB_DISABLE_PROGRESS_BARS", "1")):
            os.environ.setdefault(var, value)
    try:
        app(args=args, prog_name="asymvq")
    except KeyboardInterrupt:
        if debug:
            raise
        print("asymvq: interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as exc:  # noqa: BLE001 - the one place errors become exit codes
        if debug:
            raise
        message = " ".join(str(exc).split()) or type(exc).__name__
        if isinstance(exc, (ValueError, OSError, ImportError)):
            print(f"asymvq: error: {message}", file=sys.stderr)
        else:
            print(f"asymvq: error: {type(exc).__name__}: {message} (rerun with --debug for the traceback)", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
