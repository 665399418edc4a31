"""Tiled and region decoding in the pipeline and the CLI: which decoder engines can run them.

``decode_options`` = ``{"tile": N, "overlap": M, "region": "mask" | "auto", "margin": K, "region_stats": "box" |
"lowres"}`` (any subset; latent pixels; see docs/decoder.md). Tiles are Python around the decoder's modules
(``asymvq.models.tiled_decode``), not part of an exported graph, so only a torch decoder tiles (an
engine whose ``capabilities`` say ``tiles``: a ``TorchEngine`` wrapping an ``AsymmetricDecoder``; a
``torch-compile`` engine runs them eagerly). Regions are crops through the same engine
(``asymvq.models.region``): the torch decoder and every exported conditional decoder (ONNX Runtime,
OpenVINO, TensorRT, AOTInductor) decode them, their ``capabilities`` say ``regions``, the crop sizes
they accept and the ``region_stats`` they normalise a box with (a crop alone: "box"; "lowres", only with a region,
is the torch decoder's). ``"auto"`` is resolved here, once per decode, for the statistics asked, and the choice is
noted on the call's timer (``decode_region``: the profile and the servers' ``X-Asymvq-Decode-Region`` header).
"""
from __future__ import annotations

import torch

from ..engines.contract import DECODER, capabilities
from ..models.region import DEFAULT_REGION_STATS, check_region_options, choose_region
from .stages import SPAN_DECODE, pick_decoder

TILE_KEYS, REGION_KEYS = ("tile", "overlap"), ("region", "margin", "region_stats")  # capabilities.tiles / .regions
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


def modes_engine(engines: dict, options: dict, conditioned: bool = True) -> str:
    """The name of the decoder engine that runs ``options`` (``pick_decoder``; ``conditioned``: with image and mask),
    refused unless its ``capabilities`` take them: what a decode checks first, and a server or the CLI before any
    job (no inputs needed)."""
    name = pick_decoder(engines, True if conditioned else None)  # it asks only whether there is an image
    engine = engines[name]
    caps = capabilities(engine)
    if any(k in options for k in TILE_KEYS) and not caps.tiles:
        raise ValueError(
            f"decode_options: tiled decoding runs on the torch backend only; this pipeline's {name!r} engine is "
            f"{_backend(engine)!r} (drop tile/overlap, or use a torch pipeline: from_pretrained / from_preset)")
    if any(k in options for k in REGION_KEYS) and not caps.regions:
        raise ValueError(
            f"decode_options: region decoding needs a decoder engine that decodes regions (torch, or an exported "
            f"conditional decoder); this pipeline's {name!r} engine is {_backend(engine)!r}")
    region, _, stats = check_region_options(options.get("region"), options.get("margin"), options.get("region_stats"))
    if name != DECODER and region is not None:
        raise ValueError("decode_options: region='mask' or 'auto' needs an inpainting run (image and mask)")
    if region is not None:
        caps.check_region_stats(stats, f"this pipeline's {name!r} engine ({_backend(engine)})")
    return name


def run_decoder_with_modes(engines: dict, timer, latent: torch.Tensor, image, mask, options: dict) -> torch.Tensor:
    """``stages.run_decoder`` with tile/region options: the same engine choice, run by an engine whose
    ``capabilities`` say it tiles / decodes regions (``engine.decode_with_modes``). A region request is
    resolved to the box (snapped to the engine's crop sizes) or the whole image here, and noted on ``timer``."""
    name = modes_engine(engines, options, image is not None)
    engine = engines[name]
    caps = capabilities(engine)
    feeds = dict(latent=latent, image=image, mask=mask) if name == DECODER else dict(latent=latent)
    if options.get("region") is not None:
        region, margin, stats = check_region_options(options["region"], options.get("margin"),
                                                     options.get("region_stats"))
        choice = choose_region(region, mask, margin, latent.shape[-2], latent.shape[-1], caps.region_sizes,
                               f"the {_backend(engine)} {name} engine", stats)
        timer.note(NOTE_REGION, choice)
        options = {k: v for k, v in options.items() if k not in REGION_KEYS}
        if choice.decodes_box or choice.empty:  # the engine finds the same box again (same mask, margin, sizes)
            options.update(region="mask", margin=margin)
            if stats != DEFAULT_REGION_STATS:  # only where asked: an engine that states regions knows "box"
                options["region_stats"] = stats
    with timer.span(SPAN_DECODE):
        if not options:  # "auto" chose the whole image: the plain call
            return engine(**feeds)[engine.output_names[0]]
        return engine.decode_with_modes(options, **feeds)[engine.output_names[0]]


CLI_FLAGS = {"tile": "--tile", "overlap": "--overlap", "region": "--decode-region", "margin": "--margin",
             "region_stats": "--region-stats"}


def cli_decode_options(tile, overlap, region, margin, region_stats=None) -> dict:
    """The CLI's --tile/--overlap/--decode-region/--margin/--region-stats as decode_options (None: not given), the
    region's flags checked now, before any model loads (the tile's need the decoder's config)."""
    if region not in (None, "mask", "auto", "full"):
        raise ValueError(f"--decode-region: expected 'mask' (decode the mask's box only), 'auto' (the box when it "
                         f"pays, else the whole image) or 'full', got {region!r}")
    options = check_decode_options({"tile": tile, "overlap": overlap, "region": None if region == "full" else region,
                                    "margin": margin, "region_stats": region_stats})
    if options.get("region") is None:
        for key, value in (("margin", margin), ("region_stats", region_stats)):
            if value is not None:
                raise ValueError(f"{CLI_FLAGS[key]}: only with --decode-region mask or auto, got {CLI_FLAGS[key]} "
                                 f"{value} without one")
    try:
        check_region_options(options.get("region"), options.get("margin"), options.get("region_stats"))
    except ValueError as e:
        raise as_cli_error(e) from None
    return options


def cli_region_options(region, margin, region_stats=None) -> dict:
    """A server's --decode-region / --margin / --region-stats (every job's) as decode_options, checked whole now
    rather than on each request: {} for the whole image."""
    return cli_decode_options(None, None, region, margin, region_stats)


def as_cli_error(exc: ValueError) -> ValueError:
    """A decoder's "tile: expected ..." as "--tile: expected ..." (other errors unchanged)."""
    head, sep, rest = str(exc).partition(":")
    if sep and head in CLI_FLAGS:
        return ValueError(f"{CLI_FLAGS[head]}:{rest}")
    return exc
