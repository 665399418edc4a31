"""Tiled and region decoding in the pipeline and the CLI: which decoder engines can run them.

``decode_options`` = ``{"tile": N, "overlap": M, "region": "mask" | "auto", "margin": K}`` (any subset;
latent pixels; see docs/decoder.md). Tiles are Python around the decoder's modules
(``asymvq.models.tiled_decode``), not part of an exported graph, so only a torch decoder tiles (an
engine whose ``capabilities`` say ``tiles``: a ``TorchEngine`` wrapping an ``AsymmetricDecoder``; a
``torch-compile`` engine runs them eagerly). Regions are crops through the same engine
(``asymvq.models.region``): the torch decoder and every exported conditional decoder (ONNX Runtime,
OpenVINO, TensorRT, AOTInductor) decode them, their ``capabilities`` say ``regions`` and the crop sizes
they accept. ``"auto"`` is resolved here, once per decode, and the choice is noted on the call's timer
(``decode_region``: the profile and the servers' ``X-Asymvq-Decode-Region`` header).
"""
from __future__ import annotations

import torch

from ..engines.contract import DECODER, capabilities
from ..models.region import check_region, choose_region
from .stages import SPAN_DECODE, pick_decoder

TILE_KEYS, REGION_KEYS = ("tile", "overlap"), ("region", "margin")  # what capabilities.tiles / .regions allow
DECODE_OPTION_KEYS = TILE_KEYS + REGION_KEYS
NOTE_REGION = "decode_region"  # the timer note of the region a decode took (RegionChoice.describe())


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


def _backend(engine) -> str:
    return getattr(engine, "backend", type(engine).__name__)


def run_decoder_with_modes(engines: dict, timer, latent: torch.Tensor, image, mask, options: dict) -> torch.Tensor:
    """``stages.run_decoder`` with tile/region options: the same engine choice, run by an engine whose
    ``capabilities`` say it tiles / decodes regions (``engine.decode_with_modes``). A region request is
    resolved to the box (snapped to the engine's crop sizes) or the whole image here, and noted on ``timer``."""
    name = pick_decoder(engines, image)
    use_cond, engine = name == DECODER, engines[name]
    caps = capabilities(engine)
    if any(k in options for k in TILE_KEYS) and not caps.tiles:
        raise ValueError(
            f"decode_options: tiled decoding runs on the torch backend only; this pipeline's {name!r} engine is "
            f"{_backend(engine)!r} (drop tile/overlap, or use a torch pipeline: from_pretrained / from_preset)")
    if any(k in options for k in REGION_KEYS) and not caps.regions:
        raise ValueError(
            f"decode_options: region decoding needs a decoder engine that decodes regions (torch, or an exported "
            f"conditional decoder); this pipeline's {name!r} engine is {_backend(engine)!r}")
    if options.get("region") is None and "margin" in options:
        raise ValueError(f"margin: only with region='mask' or 'auto', got margin={options['margin']!r} without a region")
    if not use_cond and options.get("region") is not None:
        raise ValueError("decode_options: region='mask' or 'auto' needs an inpainting run (image and mask)")
    feeds = dict(latent=latent, image=image, mask=mask) if use_cond else dict(latent=latent)
    if options.get("region") is not None:
        region, margin = check_region(options["region"], options.get("margin"))
        choice = choose_region(region, mask, margin, latent.shape[-2], latent.shape[-1], caps.region_sizes,
                               f"the {_backend(engine)} {name} engine")
        timer.note(NOTE_REGION, choice)
        options = {k: v for k, v in options.items() if k not in REGION_KEYS}
        if choice.decodes_box or choice.empty:  # the engine finds the same box again (same mask, margin, sizes)
            options.update(region="mask", margin=margin)
    with timer.span(SPAN_DECODE):
        if not options:  # "auto" chose the whole image: the plain call
            return engine(**feeds)[engine.output_names[0]]
        return engine.decode_with_modes(options, **feeds)[engine.output_names[0]]


CLI_FLAGS = {"tile": "--tile", "overlap": "--overlap", "region": "--decode-region", "margin": "--margin"}


def cli_decode_options(tile, overlap, region, margin) -> dict:
    """The CLI's --tile/--overlap/--decode-region/--margin as decode_options (None: not given)."""
    if region not in (None, "mask", "auto", "full"):
        raise ValueError(f"--decode-region: expected 'mask' (decode the mask's box only), 'auto' (the box when it "
                         f"pays, else the whole image) or 'full', got {region!r}")
    return check_decode_options({"tile": tile, "overlap": overlap, "region": None if region == "full" else region,
                                 "margin": margin})


def cli_region_options(region, margin) -> dict:
    """A server's --decode-region / --margin (every job's) as decode_options, checked whole now rather than on each
    request: {} for the whole image."""
    options = cli_decode_options(None, None, region, margin)
    if options.get("region") is not None:
        check_region(options["region"], options.get("margin"))
    elif "margin" in options:
        raise ValueError(f"--margin: only with --decode-region mask or auto, got --margin {margin!r} without one")
    return options


def as_cli_error(exc: ValueError) -> ValueError:
    """A decoder's "tile: expected ..." as "--tile: expected ..." (other errors unchanged)."""
    head, sep, rest = str(exc).partition(":")
    if sep and head in CLI_FLAGS:
        return ValueError(f"{CLI_FLAGS[head]}:{rest}")
    return exc
