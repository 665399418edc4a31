"""What the commands of ``asymvq`` share: option help texts, the decode-mode options, ``--size``, and
where a command's own log lines go."""
from __future__ import annotations

import logging
import sys

import typer

from ..models.region import AUTO_MIN_SPEEDUP, DEFAULT_MARGIN, DEFAULT_REGION_STATS


class _CurrentStderr(logging.StreamHandler):
    """A handler on whatever ``sys.stderr`` is when a record is written (as logging's own last-resort handler): a
    command run in-process (tests, an embedding host) under a redirected stderr must not pin that stream, which is
    closed by the time a later command logs."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value):  # StreamHandler.__init__ assigns it
        pass


def log_to_stderr(name: str, fmt: str) -> logging.Logger:
    """Logger ``name`` at INFO on stderr in ``fmt`` (one handler however often a command runs in-process)."""
    logger = logging.getLogger(name)
    if not logger.handlers:
        handler = _CurrentStderr()
        handler.setFormatter(logging.Formatter(fmt))
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    return logger

SCHEDULER_HELP = "ddim, pndm, euler or dpm++"
SCHEDULER_DEFAULT_HELP = (f"{SCHEDULER_HELP} (default: ddim for SD, the pipeline's own for SDXL; FLUX.1 Fill runs its "
                          "flow-matching scheduler only).")
# `inpaint` and `serve`: the source's options, one text for both commands
PRESET_HELP = ("Or seeded random networks, no files (a demo, not real images): tiny or sd15 (SD), tiny-sdxl or sdxl, "
               "tiny-flux-fill or flux-fill (the real-size ones allocate every weight).")
MODEL_HELP = ("Local diffusers-format inpainting folder: SD 1.x, SDXL or FLUX.1 Fill, the family read from its "
              "components (unet/ or transformer/, vae/, text encoders, ...).")
DECODER_HELP = ("Decoder checkpoint (default: the folder's own VAE decoder, FLUX's plain one for FLUX.1 Fill). For "
                "SDXL / FLUX.1 Fill also with --preset, and a decoder preset works too: tiny-asuka or asuka-flux "
                "(ASUKA's conditional decoder, seeded), tiny-flux.")
GUIDANCE_HELP = ("Guidance scale (default: the family's: 7.5 classifier-free for SD and SDXL, in [0, 50]; 30 for "
                 "FLUX.1 Fill's distilled guidance, in [0, 100]).")
BACKEND_HELP = ("With --engines: onnxruntime, openvino, tensorrt, aoti, torch or torch-compile (default: TensorRT on "
                "CUDA when built, OpenVINO on the CPU when the directory has its IR, else ONNX Runtime).")
# The decode modes of `inpaint`, `decode`, `profile` and `serve` (docs/decoder.md), one definition for all.
TILE_OPTION = typer.Option(None, help="Tiled decode: tiles of N latent pixels (8N image pixels), memory bounded by the "
                           "tile (docs/decoder.md). Torch decoders only.")
OVERLAP_OPTION = typer.Option(None, help="Latent pixels shared by neighbouring tiles (default 4; any overlap is exact).")
DECODE_REGION_HELP = ("'mask': decode only the mask's box (plus --margin), copy the rest from the source; 'auto': the box "
                      f"when the cost model predicts it pays (>= {AUTO_MIN_SPEEDUP}x), else the whole image; 'full' (default). "
                      "Torch decoders and every exported conditional decoder (docs/decoder.md).")
DECODE_REGION_OPTION = typer.Option(None, "--decode-region", help=DECODE_REGION_HELP)
MARGIN_OPTION = typer.Option(None, help=f"Latent pixels of context around the mask's box (default {DEFAULT_MARGIN}).")
REGION_STATS_OPTION = typer.Option(
    None, "--region-stats", help=f"With --decode-region mask or auto: the GroupNorm statistics the box is normalised "
    f"with, 'box' (default {DEFAULT_REGION_STATS!r}: its own, as a decode of the crop) or 'lowres' (the whole image's, "
    "estimated by a low-resolution pass: much closer to the full decode inside the box, for an extra share of its "
    "cost that 'auto' counts). 'lowres': torch decoders only (docs/decoder.md).")
PRECISION_HELP = ("With --engines --backend openvino: the precision OpenVINO computes in, fp32 or bf16 (default: bf16 "
                  "where the CPU has native bf16, avx512_bf16 or AMX; fp32 otherwise). Not the export's precision.")


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
