"""Tiled and region decoding in the pipeline and the CLI: which decoder engines can run them.

``decode_options`` = ``{"tile": N, "overlap": M, "region": "mask", "margin": K}`` (any subset;
latent pixels; see docs/decoder.md). The modes are Python around the decoder's modules
(``asymvq.models.tiled_decode``), not part of an exported graph, so only the torch backend runs
them: an engine whose ``capabilities`` say ``tiles`` / ``regions``, which is a ``TorchEngine`` whose
module wraps an ``AsymmetricDecoder`` (a ``torch-compile`` engine runs them eagerly). ONNX Runtime,
OpenVINO, TensorRT and AOTInductor engines, the Triton kernels' fused ops aside, and the C++ host
decode the whole image: asking them to tile is a ValueError.
"""
from __future__ import annotations

import torch

from ..engines.contract import DECODER, capabilities
from .stages import SPAN_DECODE, pick_decoder

TILE_KEYS, REGION_KEYS = ("tile", "overlap"), ("region", "margin")  # what capabilities.tiles / .regions allow
DECODE_OPTION_KEYS = TILE_KEYS + REGION_KEYS


def check_decode_options(options) -> dict:
    """A dict with keys among ``DECODE_OPTION_KEYS`` (values are checked by the decoder), or {}."""
    if options is None:
        return {}
    if not isinstance(options, dict):
        raise ValueError(f"decode_options: expected a dict with keys among {DECODE_OPTION_KEYS}, "
                         f"got {type(options).__name__}")
    unknown = sorted(set(options) - set(DECODE_OPTION_KEYS))
    if unknown:
        raise ValueError(f"decode_options: unknown keys {unknown}, expected keys among {DECODE_OPTION_KEYS}")
    return {k: v for k, v in options.items() if v is not None}


def run_decoder_with_modes(engines: dict, timer, latent: torch.Tensor, image, mask, options: dict) -> torch.Tensor:
    """``stages.run_decoder`` with tile/region options: the same engine choice, run by an engine whose
    ``capabilities`` say it tiles / decodes regions (``engine.decode_with_modes``)."""
    name = pick_decoder(engines, image)
    use_cond, engine = name == DECODER, engines[name]
    caps = capabilities(engine)
    if (any(k in options for k in TILE_KEYS) and not caps.tiles) or (any(k in options for k in REGION_KEYS)
                                                                    and not caps.regions):
        raise ValueError(
            f"decode_options: tiled and region decoding run on the torch backend only; this pipeline's "
            f"{name!r} engine is {getattr(engine, 'backend', type(engine).__name__)!r} (drop the options, "
            "or use a torch pipeline: from_pretrained / from_preset)"
        )
    if not use_cond and options.get("region") is not None:
        raise ValueError("decode_options: region='mask' needs an inpainting run (image and mask)")
    feeds = dict(latent=latent, image=image, mask=mask) if use_cond else dict(latent=latent)
    with timer.span(SPAN_DECODE):
        return engine.decode_with_modes(options, **feeds)[engine.output_names[0]]


CLI_FLAGS = {"tile": "--tile", "overlap": "--overlap", "region": "--decode-region", "margin": "--margin"}


def cli_decode_options(tile, overlap, region, margin) -> dict:
    """The CLI's --tile/--overlap/--decode-region/--margin as decode_options (None: not given)."""
    if region not in (None, "mask", "full"):
        raise ValueError(f"--decode-region: expected 'mask' (decode the mask's box only) or 'full', got {region!r}")
    return check_decode_options({"tile": tile, "overlap": overlap, "region": None if region == "full" else region,
                                 "margin": margin})


def as_cli_error(exc: ValueError) -> ValueError:
    """A decoder's "tile: expected ..." as "--tile: expected ..." (other errors unchanged)."""
    head, sep, rest = str(exc).partition(":")
    if sep and head in CLI_FLAGS:
        return ValueError(f"{CLI_FLAGS[head]}:{rest}")
    return exc
