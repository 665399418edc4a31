"""Region decoding's geometry and its cost model, shared by every backend that decodes a region.

The region mode (``region="mask"``) decodes the mask's bounding box (union over the batch) grown by
``margin`` latent pixels and clipped to the image, as a decode of its own, and takes every pixel
outside the box from the source image. It is plain tensor slicing around *one* decoder call, so any
engine that decodes a crop runs it: the torch decoder (``tiled_decode.region_decode``), the exported
engines (``asymvq.engines.feeds.ExportedEngine.decode_with_modes``) and the C++ host (``host/pipeline.cpp``,
the same steps in C++). What differs between engines is which crop sizes they accept: ``snap_box``
grows the box to an engine's smallest size, or refuses a box above its largest.

``region="auto"`` decodes the box when the cost model says it pays and the whole image otherwise
(``choose_region``). The model: a region decode takes ``a + b x share`` of the full decode's time,
``share`` the box's fraction of the image's latent pixels, with (a, b) fitted by least squares to every
measured region point of ``bench/results/decoder_scaling.json`` (tiny and base, 512 and 1024, fp32 CPU;
``tests/models/test_region.py`` refits them from that file). The fit is the FLOP ratio within noise:
the decoder's cost is linear in the pixels it decodes, the crop and the paste are negligible.

``region_stats`` (``"box"``, the default, or ``"lowres"``: ``asymvq.models.region_stats``) says which GroupNorm
statistics the box is normalised with; every engine decodes a crop with its own ("box"), only the torch decoder
runs "lowres". Its extra cost enters "auto"'s model as counted FLOPs (``lowres_extra``): the head on the whole latent
instead of the box, and the up path on the whole image at 1/f (``lowres_factor``).

``RegionModel`` gathers what a region request needs besides the mask (the default margin and the cost
model); ``REGION_MODEL`` is the package's, made of the constants below. An engines directory's manifest
records it (key ``region``, written by ``asymvq export``), which is where the C++ host, having no Python,
reads it from.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .json_values import from_exact_dict, is_real, shown

SCALE = 8  # image pixels per latent pixel
REGIONS = ("mask", "auto")
# Latent pixels of unmasked context around the mask's box (the curve against the margin: docs/decoder.md).
DEFAULT_MARGIN = 4
# t_region / t_full = a + b * share, fitted to bench/results/decoder_scaling.json (18 points, rms 0.05).
REGION_TIME_FIT = (-0.0128, 0.9925)
# "auto" decodes the box only when the model predicts at least this speed-up: below it the gain is within
# the measured scatter (the 60 % masks ran 1.11x-1.32x for a predicted 1.2-1.4x), and a region decode is
# not the full decode inside the box (its own GroupNorm statistics), so it must buy a clear gain.
AUTO_MIN_SPEEDUP = 1.2
REGION_STATS = ("box", "lowres")
DEFAULT_REGION_STATS = "box"
LOWRES_FACTOR = 4  # the low-resolution pass's stride (1/16 of the up path's FLOPs)
LOWRES_MIN_LATENT = 16  # ... unless it leaves fewer latent pixels than this on the short side: then 2
# "lowres"'s extra FLOPs, per latent pixel in units of the up path's (the condition branch included): the head's
# convolutions (k1) and its attention (k2 per pixel of the image: quadratic); counted on the meta device for base
# (tests/models/test_region_stats.py refits them; the tiny presets' head is a larger share: docs/decoder.md).
LOWRES_HEAD_COST = (0.0287, 2.80e-6)
REGION_FIELDS = ("default_margin", "time_fit", "auto_min_speedup")


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


@dataclass(frozen=True)
class RegionModel:
    """The default ``margin`` of a region request and the cost model of "auto": a region decode takes
    ``time_fit[0] + time_fit[1] x share`` of the full decode's time, and "auto" keeps the box only at a
    predicted speed-up of ``auto_min_speedup`` or more."""

    default_margin: int = DEFAULT_MARGIN
    time_fit: tuple[float, float] = REGION_TIME_FIT
    auto_min_speedup: float = AUTO_MIN_SPEEDUP

    def __post_init__(self):
        if not _is_int(self.default_margin) or self.default_margin < 0:
            raise ValueError(f"default_margin must be an integer >= 0, got {shown(self.default_margin)}")
        fit = self.time_fit
        if not isinstance(fit, (tuple, list)) or len(fit) != 2 or not all(is_real(v) for v in fit):
            raise ValueError(f"time_fit must be two finite numbers [a, b] (t_region / t_full = a + b * share), got {shown(fit)}")
        if not is_real(self.auto_min_speedup) or not self.auto_min_speedup > 0:
            raise ValueError(f"auto_min_speedup must be a positive finite number, got {shown(self.auto_min_speedup)}")
        object.__setattr__(self, "time_fit", (float(fit[0]), float(fit[1])))
        object.__setattr__(self, "auto_min_speedup", float(self.auto_min_speedup))

    def predicted_speedup(self, share: float, extra: float = 0.0) -> float:
        """The full decode's time over a region decode's whose box is ``share`` of the image, with ``extra`` of the
        full decode's time on top (``lowres_extra``)."""
        a, b = self.time_fit
        return 1.0 / max(a + b * share + extra, 1e-6)

    def to_dict(self) -> dict:
        """The manifest's ``region`` object."""
        return {"default_margin": self.default_margin, "time_fit": list(self.time_fit),
                "auto_min_speedup": self.auto_min_speedup}

    @classmethod
    def from_dict(cls, d, key: str = "region") -> "RegionModel":
        """From ``to_dict``'s form; a ValueError names ``key.field`` and the expected form otherwise."""
        return from_exact_dict(cls, d, key, REGION_FIELDS)


REGION_MODEL = RegionModel()


def check_region(region, margin) -> tuple[str, int]:
    if region not in REGIONS:
        raise ValueError(f"region: expected one of {REGIONS} or None (decode everything), got {region!r}")
    if margin is None:
        margin = DEFAULT_MARGIN
    if not _is_int(margin) or margin < 0:
        raise ValueError(
            f"margin: expected an integer >= 0 (latent pixels of context around the mask's box; "
            f"default {DEFAULT_MARGIN}), got {margin!r}"
        )
    return region, margin


def check_region_stats(stats) -> str:
    if stats is None:
        return DEFAULT_REGION_STATS
    if stats not in REGION_STATS:
        raise ValueError(f"region_stats: expected one of {REGION_STATS} (the GroupNorm statistics a region decode "
                         f"normalises the box with; default {DEFAULT_REGION_STATS!r}), got {stats!r}")
    return stats


def check_region_options(region, margin, stats) -> tuple[str | None, int | None, str | None]:
    """``(region, margin, region_stats)`` checked, defaults filled in; all None without a region (then margin and
    region_stats must be None too)."""
    if region is None:
        for name, value in (("margin", margin), ("region_stats", stats)):
            if value is not None:
                raise ValueError(f"{name}: only with region='mask' or 'auto', got {name}={value!r} without a region")
        return None, None, None
    region, margin = check_region(region, margin)
    return region, margin, check_region_stats(stats)


def lowres_factor(h: int, w: int) -> int:
    """The low-resolution pass's stride for an h x w latent (``region_stats="lowres"``)."""
    return LOWRES_FACTOR if min(h, w) // LOWRES_FACTOR >= LOWRES_MIN_LATENT else 2


def mask_box(mask: torch.Tensor, margin: int, h: int, w: int) -> tuple[int, int, int, int] | None:
    """Latent-pixel box (y0, y1, x0, x1) around every hole pixel of the (B or 1, 1, 8h, 8w) mask,
    grown by ``margin`` and clipped to the latent; None when the mask has no hole."""
    rows = (mask > 0.5).any(dim=0).any(dim=0).any(dim=1)
    cols = (mask > 0.5).any(dim=0).any(dim=0).any(dim=0)
    if not bool(rows.any()):
        return None
    r = torch.nonzero(rows).flatten()
    c = torch.nonzero(cols).flatten()
    y0, y1 = int(r[0]) // SCALE, math.ceil((int(r[-1]) + 1) / SCALE)
    x0, x1 = int(c[0]) // SCALE, math.ceil((int(c[-1]) + 1) / SCALE)
    return max(y0 - margin, 0), min(y1 + margin, h), max(x0 - margin, 0), min(x1 + margin, w)


def _snap_axis(a: int, b: int, size: int, lo: int, hi: int, axis: str, where: str) -> tuple[int, int]:
    n = b - a
    if n > hi:
        raise ValueError(
            f"region: the mask's box is {n} latent pixels along {axis} ({SCALE * n} image pixels), above the "
            f"{hi} that {where} accepts; decoding a region there needs a dynamic engine (re-export with --shapes "
            f"covering the box, or use ONNX Runtime / OpenVINO, which run any size), or decode the whole image")
    if n >= lo:
        return a, b
    if lo > size:
        raise ValueError(
            f"region: {where} accepts at least {lo} latent pixels along {axis}, the image has {size}; "
            "decoding a region there needs a dynamic engine (re-export with --shapes)")
    grow = lo - n  # grown on both sides, shifted back inside the image
    a = min(max(a - grow // 2, 0), size - lo)
    return a, a + lo


def snap_box(box: tuple[int, int, int, int], h: int, w: int, sizes=None, where: str = "this engine"):
    """``box`` grown to the smallest crop the engine accepts, or refused above its largest.

    ``sizes``: ``((min_h, max_h), (min_w, max_w))`` in latent pixels (None: any size). A box below the
    minimum grows around its centre and stays inside the image, so it still holds the mask and its margin."""
    if sizes is None:
        return box
    (lo_h, hi_h), (lo_w, hi_w) = sizes
    y0, y1 = _snap_axis(box[0], box[1], h, lo_h, hi_h, "the height", where)
    x0, x1 = _snap_axis(box[2], box[3], w, lo_w, hi_w, "the width", where)
    return y0, y1, x0, x1


def lowres_extra(h: int, w: int, share: float, cost: tuple[float, float] = LOWRES_HEAD_COST) -> float:
    """What ``region_stats="lowres"`` adds to a region decode of a box ``share`` of an h x w latent, as a share of the
    full decode: the head on the whole latent less the box's, and the up path at 1/f (``cost``: the head's, as
    ``LOWRES_HEAD_COST``); 0 for a box that is the image (decoded plainly)."""
    if share >= 1.0:
        return 0.0
    k1, k2 = cost
    f = lowres_factor(h, w)
    n = h * w

    def head(p):
        return k1 * p + k2 * p * p

    return (head(n) - head(share * n) + (h // f) * (w // f)) / (n + head(n))


def predicted_speedup(share: float, extra: float = 0.0, model: RegionModel = REGION_MODEL) -> float:
    """The full decode's time over a region decode's whose box is ``share`` of the image (the fitted model), with
    ``extra`` of the full decode's time on top (``lowres_extra``)."""
    return model.predicted_speedup(share, extra)


@dataclass(frozen=True)
class RegionChoice:
    """What a region request decodes: ``box`` (latent pixels y0, y1, x0, x1), or the whole image (``box`` None
    with ``empty`` False), or nothing (an empty mask: the output is the source); ``stats``: the box's statistics."""

    asked: str  # "mask" or "auto"
    box: tuple[int, int, int, int] | None
    share: float  # the box's fraction of the image (1.0 for the whole image, 0.0 for an empty mask)
    speedup: float  # predicted by the cost model
    empty: bool = False
    stats: str = DEFAULT_REGION_STATS  # region_stats: what the box is (or would have been) normalised with
    min_speedup: float = AUTO_MIN_SPEEDUP  # the threshold "auto" weighed the box against

    @property
    def decodes_box(self) -> bool:
        return self.box is not None

    def describe(self) -> str:
        """One line for a response header and the profile:
        ``box y0:y1,x0:x1 (auto: share 0.33, predicted 3.1x, box statistics)``."""
        if self.empty:
            return f"none (empty mask; {self.asked})"
        if self.box is None:
            return (f"full ({self.asked}: box share {self.share:.2f}, predicted {self.speedup:.2f}x < "
                    f"{self.min_speedup:g}x, {self.stats} statistics)")
        y0, y1, x0, x1 = self.box
        return (f"box {y0}:{y1},{x0}:{x1} ({self.asked}: share {self.share:.2f}, predicted {self.speedup:.2f}x, "
                f"{self.stats} statistics)")

    def to_dict(self) -> dict:
        return {"asked": self.asked, "box_latent": list(self.box) if self.box else None, "share": self.share,
                "predicted_speedup": self.speedup, "empty": self.empty, "region_stats": self.stats,
                "decoded": self.describe()}


def choose_region(region: str, mask: torch.Tensor, margin: int, h: int, w: int, sizes=None,
                  where: str = "this engine", stats: str = DEFAULT_REGION_STATS,
                  model: RegionModel = REGION_MODEL) -> RegionChoice:
    """The box ``region`` ("mask" or "auto", checked) decodes for a (B or 1, 1, 8h, 8w) mask, snapped to
    ``sizes`` (``snap_box``), normalised with ``stats`` (checked). "auto" keeps the box only when
    ``model.predicted_speedup`` (with ``lowres_extra`` for ``"lowres"``) reaches ``model.auto_min_speedup``, and
    decodes the whole image (``box`` None) otherwise; a box that no engine size fits is then the whole image too,
    rather than an error. (The C++ host, host/region.cpp, makes the same choice, box statistics only, with the
    model of the engines manifest.)"""
    threshold = model.auto_min_speedup
    box = mask_box(mask, margin, h, w)
    if box is None:
        return RegionChoice(region, None, 0.0, math.inf, empty=True, stats=stats, min_speedup=threshold)
    try:
        box = snap_box(box, h, w, sizes, where)
    except ValueError:
        if region == "mask":
            raise
        return RegionChoice(region, None, 1.0, 1.0, stats=stats, min_speedup=threshold)
    share = (box[1] - box[0]) * (box[3] - box[2]) / (h * w)
    speedup = model.predicted_speedup(share, lowres_extra(h, w, share) if stats == "lowres" else 0.0)
    if region == "auto" and speedup < threshold:
        return RegionChoice(region, None, share, speedup, stats=stats, min_speedup=threshold)
    return RegionChoice(region, box, share, speedup, stats=stats, min_speedup=threshold)


def decode_box_with_context(run, latents: torch.Tensor, image: torch.Tensor, mask: torch.Tensor, box,
                            out_dtype: torch.dtype, source: torch.Tensor | None = None):
    """The source image with ``box`` replaced by ``run(latents, image, mask, box)``: a decode of the box that sees
    the whole inputs (``region_stats="lowres"``: the head and a low-resolution pass on the whole image), returning
    (B, 3, 8 box_h, 8 box_w); ``box`` None: the source unchanged. ``source``: the image pasted outside the box,
    when ``image`` is the decoder's rounded copy of it (default ``image``)."""
    B = latents.shape[0]
    image_out = image if source is None else source
    if box is None:
        return image_out.to(out_dtype).expand(B, -1, -1, -1).clone()
    y0, y1, x0, x1 = box
    crop = run(latents, image, mask, box)
    out = image_out.to(device=crop.device, dtype=crop.dtype).expand(B, -1, -1, -1).clone()
    out[:, :, y0 * SCALE:y1 * SCALE, x0 * SCALE:x1 * SCALE] = crop
    return out


def decode_box(run, latents: torch.Tensor, image: torch.Tensor, mask: torch.Tensor, box, out_dtype: torch.dtype,
               source: torch.Tensor | None = None):
    """``decode_box_with_context`` where the box's decode is ``run(latent crop, image crop, mask crop)``: one decode
    of the crops alone (the box's own statistics), what every engine runs."""
    def crops(lat, img, msk, b):
        y0, y1, x0, x1 = b
        pix = (slice(None), slice(None), slice(y0 * SCALE, y1 * SCALE), slice(x0 * SCALE, x1 * SCALE))
        return run(lat[:, :, y0:y1, x0:x1], img[pix], msk[pix])

    return decode_box_with_context(crops, latents, image, mask, box, out_dtype, source)
