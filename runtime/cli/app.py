"""The ``asymvq`` command line: ``profile``, ``inpaint`` and ``decode`` here, ``serve`` and ``export`` registered.

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

from ..engines.contract import DECODER
from ..engines.manifest import read_manifest
from ..models import PRESETS
from ..models.checkpoints import load_decoder
from ..models.config import PRESET_ALIASES
from ..models.cpu_features import cpu_features
from ..models.devices import DTYPE_CHOICES, DTYPE_HELP, parse_device, parse_dtype
from ..models.family_networks import FAMILY_PRESETS
from ..models.sd_networks import SD_PRESETS
from ..models.sources import random_decoder
from ..pipeline.decode_modes import as_cli_error, cli_decode_options, modes_engine
from ..pipeline.family_rules import SD
from ..pipeline.images import load_image, postprocess, prepare_image_and_mask
from ..pipeline.inpaint_run import check_same_size, run_inpaint
from ..pipeline.job_rules import ARGS as JOB_ARGS
from ..pipeline.job_rules import check_image_size, check_job
from ..pipeline.latents_io import load_latents
from ..pipeline.schedulers import SCHEDULER_ALIASES, SCHEDULERS
from ..pipeline.source import PipelineSource, source_family
from ..profiling.profiler import ProfileConfig, default_config, flop_table_job, flops_only_report
from ..profiling.profiler import profile as run_profile
from ..profiling.report import format_flops_only, format_table, write_json
from ..profiling.report import plot as draw
from .export import register as _register_export
from .options import (
    BACKEND_HELP,
    DECODE_REGION_OPTION,
    DECODER_HELP,
    GUIDANCE_HELP,
    MARGIN_OPTION,
    MODEL_HELP,
    OVERLAP_OPTION,
    PRECISION_HELP,
    PRESET_HELP,
    REGION_STATS_OPTION,
    SCHEDULER_DEFAULT_HELP,
    SCHEDULER_HELP,
    TILE_OPTION,
    parse_size,
)
from .out_path import check_image_out
from .serve import register as _register_serve

app = typer.Typer(
    name="asymvq",
    help="Diffusion inpainting (SD 1.x, SDXL, FLUX.1 Fill) with conditional decoders (Asymmetric VQGAN, ASUKA): "
         "profile, inpaint, decode, serve, export.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,  # main() prints one line unless --debug
)
CLI_NAMES = {name: "--" + name.replace("_", "-") for name in JOB_ARGS}  # the job's values as `inpaint` names them


@app.callback()
def _root(debug: bool = typer.Option(False, "--debug", help="On errors, show the full traceback (accepted anywhere).")):
    """asymvq: the runtime for SD inpainting with asymmetric decoders."""


# -- profile ----------------------------------------------------------------------------------
@app.command()
def profile(
    preset: Optional[str] = typer.Option(None, help="tiny or sd15 (default: tiny on a CPU, sd15 with CUDA); or FLUX.1 "
                                         "Fill / SDXL: tiny-flux-fill, tiny-sdxl (measured), flux-fill, sdxl (real "
                                         "sizes: count them with --flops-only)."),
    decoders: Optional[str] = typer.Option(None, help="Comma-separated decoder presets, e.g. vanilla,base,x1.5,x2."),
    steps: Optional[int] = typer.Option(None, help="Denoising steps (default: 10 for tiny, 50 for sd15)."),
    size: Optional[str] = typer.Option(None, help="HxW image size (default: 32x32 for tiny, 512x512 for sd15)."),
    batch: int = typer.Option(1, help="Images per run (the UNet sees 2x this under guidance)."),
    device: Optional[str] = typer.Option(None, help="cpu or cuda (default: cuda when available)."),
    dtype: Optional[str] = typer.Option(None, help=DTYPE_HELP),
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
    decode_region: Optional[str] = DECODE_REGION_OPTION,
    margin: Optional[int] = MARGIN_OPTION,
    region_stats: Optional[str] = REGION_STATS_OPTION,
):
    """Per-stage latency and memory of SD inpainting, and what each decoder costs next to diffusion."""
    # 1. the profile's configuration: the built-in default, the engines directory's, then the options
    if dtype is not None and dtype not in DTYPE_CHOICES:  # before any name is resolved against the hardware
        raise ValueError(f"--dtype: expected one of {list(DTYPE_CHOICES)}, got {dtype!r}")
    cuda = (device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda")
    base = default_config(cuda)
    if engines is not None:  # the directory decides the shapes, precision and the one decoder
        manifest = read_manifest(engines)
        preset = preset or ("tiny" if manifest["source"]["preset"] == "tiny" else "sd15")
        if dtype not in (None, manifest["precision"]):
            raise ValueError(f"--dtype: {engines} holds {manifest['precision']} engines, got --dtype {dtype}")
        dtype, decoders = manifest["precision"], decoders or engines.name
    preset = preset or base.preset
    native = {"tiny": ProfileConfig.height, "sd15": 512, "flux-fill": 1024, "sdxl": 1024}.get(preset, ProfileConfig.height)
    height, width = parse_size(size) if size else (native, native)
    config = ProfileConfig(
        preset=preset,
        decoders=tuple(d.strip() for d in decoders.split(",") if d.strip()) if decoders else None,
        steps=steps if steps is not None else {"sd15": 50, "flux-fill": 28, "sdxl": 30}.get(preset, 10),
        height=height, width=width, batch=batch, device=device or base.device, dtype=dtype or "auto",
        warmup=warmup if warmup is not None else base.warmup, repeats=repeats if repeats is not None else base.repeats,
        guidance_scale=guidance, scheduler=scheduler, seed=seed, nvtx=nvtx, kernels=kernels, flops=flops,
        decode_options=cli_decode_options(None, None, decode_region, margin, region_stats) or None,
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
    # 3. the engines directory's pipeline (the presets are built by the profiler), after threads are set
    if threads is not None:
        torch.set_num_threads(threads)
    pipeline = None
    if engines is not None or config.preset in SD_PRESETS:  # checks the source's options (the profiler builds presets)
        source = PipelineSource(engines=engines, preset=None if engines is not None else config.preset,
                                device=config.device, dtype=config.dtype, scheduler=config.scheduler, backend=backend,
                                precision=precision, threads=threads)
        pipeline = source.build() if engines is not None else None
        if pipeline is not None and DECODER in pipeline.stages.decoders():  # a plain one decodes the whole image
            _check_decode_engines(pipeline, config.decode_options)
    elif backend is not None or precision is not None:
        raise ValueError("--backend / --precision: only with --engines (the FLUX.1 Fill and SDXL presets run in torch)")
    # 4. the measured runs
    report = _run_profile(config, pipeline)
    # 5. the counted decoder-versus-diffusion table (meta device: seconds), next to the measured run
    if flop_table:
        counted = report["flop_accounting"] and {**report["flop_accounting"], "flops": report["flops"]}
        report["flop_table"] = flop_table_job(config, counted)
    # 6. the table, the JSON and the chart
    typer.echo(f"CPU: {cpu_features().describe()}")
    typer.echo(format_table(report))
    for name, choice in report.get("decode_region", {}).items():
        typer.echo(f"decode region ({name}): {choice['decoded']}")
    typer.echo(f"wrote {write_json(report, json_path)} and {draw(report, plot)}")


def _check_profile_config(config, check_decoders: bool = True) -> None:
    """Fail on a bad name before minutes of model building, not after."""
    if config.preset not in SD_PRESETS + FAMILY_PRESETS:
        raise ValueError(f"--preset: expected one of {list(SD_PRESETS + FAMILY_PRESETS)}, got {config.preset!r}")
    if "flux" in config.preset and (config.height % 16 or config.width % 16):
        raise ValueError(f"--size: expected multiples of 16 for FLUX.1 Fill (8 for the VAE x 2 for the token packing), "
                         f"got {config.height}x{config.width}")
    bad = [d for d in config.decoders if d not in PRESETS and d not in PRESET_ALIASES] if check_decoders else []
    if bad:
        raise ValueError(f"--decoders: unknown decoder presets {bad}; expected names among {sorted(PRESETS)}")
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
@app.command()
def inpaint(
    preset: Optional[str] = typer.Option(None, help=PRESET_HELP),
    model: Optional[Path] = typer.Option(None, help=MODEL_HELP),
    engines: Optional[Path] = typer.Option(None, help="Or an engines directory from `asymvq export` (ONNX Runtime / TensorRT)."),
    decoder: Optional[Path] = typer.Option(None, help=DECODER_HELP),
    image: Path = typer.Option(..., help="Source image (png, jpg, ...)."),
    mask: Path = typer.Option(..., help="Mask image, white = area to repaint; same size as the image."),
    prompt: str = typer.Option(..., help="What to paint into the hole."),
    out: Path = typer.Option(..., help="Output image path (.png)."),
    negative_prompt: Optional[str] = typer.Option(None, help="What to steer away from."),
    steps: int = typer.Option(50, help="Denoising steps."),
    seed: int = typer.Option(0, help="Seed of the noise."),
    guidance: Optional[float] = typer.Option(None, help=GUIDANCE_HELP),
    strength: float = typer.Option(1.0, help="How much of the source to re-noise, in (0, 1]."),
    scheduler: Optional[str] = typer.Option(None, help=SCHEDULER_DEFAULT_HELP),
    device: str = typer.Option("cpu", help="cpu or cuda."),
    dtype: str = typer.Option("auto", help=DTYPE_HELP),
    backend: Optional[str] = typer.Option(None, help=BACKEND_HELP),
    precision: Optional[str] = typer.Option(None, help=PRECISION_HELP),
    tile: Optional[int] = TILE_OPTION,
    overlap: Optional[int] = OVERLAP_OPTION,
    decode_region: Optional[str] = DECODE_REGION_OPTION,
    margin: Optional[int] = MARGIN_OPTION,
    region_stats: Optional[str] = REGION_STATS_OPTION,
):
    """Inpaint IMAGE where MASK is white, guided by PROMPT, and write OUT (SD 1.x, SDXL or FLUX.1 Fill: the
    family of --preset or --model)."""
    # every value refused now, before minutes of model loading, by the servers' rules (asymvq.pipeline.job_rules),
    # those of the source's family (read from the preset's name or the folder's configs)
    family = source_family(preset, model, engines)
    job = check_job(prompt=prompt, negative_prompt=negative_prompt, steps=steps, guidance=guidance, seed=seed,
                    strength=strength, scheduler=scheduler, names=CLI_NAMES, family=family)
    check_image_out(out)
    options = cli_decode_options(tile, overlap, decode_region, margin, region_stats)
    source, hole = load_image(image), load_image(mask, mode="L")
    check_same_size(source, hole, "--mask")  # before minutes of model loading, not after
    if family != SD:  # SD rounds a size down as diffusers does; the newer families' sizes are refused instead
        check_image_size(source.width, source.height, "--image", family)
    pipe = PipelineSource(preset=preset, model=model, decoder=decoder, engines=engines, device=device, dtype=dtype,
                          scheduler=job["scheduler"], backend=backend, precision=precision).build()
    _check_decode_engines(pipe, options)
    try:
        run = run_inpaint(pipe, source, hole, job["prompt"], negative_prompt=job["negative_prompt"], steps=job["steps"],
                          guidance=job["guidance"], strength=job["strength"], seed=job["seed"], progress=True,
                          mask_arg="--mask", decode_options=options)
    except ValueError as e:
        raise _inpaint_error(e) from None
    _save_images(run.images, out)
    # The paper's Pre_error: how well the kept region survived decoding (lower is better).
    typer.echo(f"Pre_error (MSE on kept pixels, 0-255 units): {run.pre_error:.2f}")


def _check_decode_engines(pipe, options) -> None:
    """The decode options against the pipeline's decoder engine before any denoising (an exported decoder refuses
    tiles and --region-stats lowres), in the CLI's words."""
    if options:
        try:
            modes_engine(pipe.stages.decoders(), options)
        except ValueError as e:
            raise as_cli_error(e) from None


def _inpaint_error(exc: ValueError) -> ValueError:
    """The pipeline's "prompt: ..." (a prompt past a text encoder's limit; prompt_2: the second encoder's, given
    the same text here) as "--prompt: ..."; the decoder's words as ``as_cli_error`` maps them."""
    head, sep, rest = str(exc).partition(":")
    flag = {**CLI_NAMES, "prompt_2": CLI_NAMES["prompt"]}.get(head)
    return ValueError(f"{flag}:{rest}") if sep and flag else as_cli_error(exc)


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
    preset: Optional[str] = typer.Option(None, help="Or a seeded random decoder preset (vanilla, base, x1.5, x2, tiny, sdxl, flux, sd3, "
                                          "asuka-flux, tiny-flux, tiny-asuka)."),
    latents: Path = typer.Option(..., help="Latents file: .pt, .npy or .safetensors, shape (B, C, h, w) or (C, h, w), C the "
                                    "decoder's latent channels (4; 16 for SD3/FLUX)."),
    out: Path = typer.Option(..., help="Output image path (.png)."),
    image: Optional[Path] = typer.Option(None, help="Unmasked source image (8h x 8w), for the condition branch."),
    mask: Optional[Path] = typer.Option(None, help="Mask (white = hole), same size as the image."),
    vae_space: bool = typer.Option(False, "--vae-space", help="Latents are already in VAE space (z / scaling_factor + shift_factor)."),
    device: str = typer.Option("cpu", help="cpu or cuda."),
    dtype: str = typer.Option("auto", help=DTYPE_HELP),
    tile: Optional[int] = TILE_OPTION,
    overlap: Optional[int] = OVERLAP_OPTION,
    decode_region: Optional[str] = DECODE_REGION_OPTION,
    margin: Optional[int] = MARGIN_OPTION,
    region_stats: Optional[str] = REGION_STATS_OPTION,
):
    """Decode saved latents (diffusion space unless --vae-space) to an image."""
    check_image_out(out)
    options = cli_decode_options(tile, overlap, decode_region, margin, region_stats)
    if (decoder is None) == (preset is None):
        raise ValueError("--decoder / --preset: give exactly one (a checkpoint path, or a decoder preset name)")
    lat = load_latents(latents)
    if (image is None) != (mask is None):
        raise ValueError("--image / --mask: give both (inpainting condition) or neither (plain decode)")
    dev = parse_device(device)
    dt = parse_dtype(dtype, dev)
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


# -- serve and export: their own files (cli/serve.py, cli/export.py), registered here ----------
_register_serve(app)
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
    except Exception as exc:  # the one place errors become exit codes
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
