"""``asymvq export``: build an engines directory (ONNX, OpenVINO IR and/or AOTInductor, optionally TensorRT plans) for the runtime.

Registered on the main ``app`` by ``runtime/cli.py``; ``--engines DIR`` of ``profile`` and
``inpaint`` then runs from what it writes.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..engines.tensorrt_engine import build_plans
from ..export import Source, export_directory, parse_shapes
from .options import log_to_stderr

FORMATS = ("onnx", "trt", "aoti", "openvino")


def parse_formats(value: str) -> list[str]:
    formats = [f.strip() for f in value.split(",") if f.strip()]
    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats or ("trt" in formats and "onnx" not in formats):
        raise ValueError(f"--format: expected onnx, aoti, openvino or a comma list of onnx, trt, aoti, openvino (trt plans are built "
                         f"from the ONNX, so trt needs onnx), got {value!r}")
    return formats


def export(
    out: Path = typer.Option(..., "--out", help="Engines directory to write (manifest.json, *.onnx, tokenizer/, scheduler/)."),
    component: str = typer.Option("all", help="decoder, decoder-plain, unet, vae-encoder, text-encoder, all, or a comma list."),
    preset: Optional[str] = typer.Option(None, help="Seeded random weights: tiny or sd15 (or a decoder preset: vanilla, base, x1.5, x2, "
                                               "sdxl, flux, sd3, asuka-flux, tiny-flux, tiny-asuka)."),
    model: Optional[Path] = typer.Option(None, help="Local diffusers SD folder (unet/, vae/, text_encoder/, tokenizer/, scheduler/)."),
    decoder: Optional[str] = typer.Option(None, help="Decoder checkpoint path, or a decoder preset name."),
    format: str = typer.Option("onnx", "--format", help="onnx, aoti (AOTInductor .pt2), openvino (IR from the ONNX), or a comma list; "
                                                                  "onnx,trt also builds TensorRT plans (needs tensorrt + CUDA)."),
    precision: str = typer.Option("fp32", help="fp32 or fp16 (fp16 keeps GroupNorm in fp32)."),
    shapes: Optional[str] = typer.Option(None, help="Shape ranges in pixels, e.g. batch=1:1:4,height=256:512:1024,width=256:512:1024."),
    unet_channels: int = typer.Option(9, help="9: inpainting UNet; 4: text-to-image UNet."),
    opset: int = typer.Option(18, help="ONNX opset (17 or newer)."),
    seed: int = typer.Option(0, help="Seed of the random weights of a preset."),
    refit: bool = typer.Option(False, help="TensorRT: build refittable plans (swap weights without a rebuild)."),
) -> None:
    """Export the decoder and the SD networks to an engines directory."""
    from rich.console import Console
    from rich.table import Table

    _quiet_exporters()
    formats = parse_formats(format)
    if precision not in ("fp32", "fp16"):
        raise ValueError(f"--precision: expected fp32 or fp16, got {precision!r}")
    source = Source(preset=preset, model=None if model is None else str(model), decoder=decoder,
                    unet_in_channels=unet_channels, seed=seed)
    manifest = export_directory(out, component, source, precision=precision,
                                shapes=parse_shapes(shapes, source.sd_preset), opset=opset,
                                formats=[f for f in formats if f != "trt"])
    if "trt" in formats:
        manifest = build_plans(out, refit=refit)
    table = Table(title=f"{out} ({precision})")
    for col in ("component", "format", "file", "MB", "sha256"):
        table.add_column(col)
    for name, entry in manifest["components"].items():
        for fmt, art in entry["artifacts"].items():
            for rel, digest in art["files"].items():
                table.add_row(name, fmt, rel, f"{(out / rel).stat().st_size / 2**20:.1f}", digest[:12])
    Console().print(table)


def _quiet_exporters() -> None:
    """Progress lines of ours; torch.onnx's notes (missing torchvision ops, deprecations) are not the user's."""
    import logging
    import warnings

    log_to_stderr("asymvq", "%(message)s")
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module="torch.onnx")


def register(app: typer.Typer) -> None:
    app.command("export")(export)
