"""Tiled decoding with image-wide GroupNorm statistics, and decoding only the masked region.

Two opt-in ways to run ``AsymmetricDecoder`` that ``forward`` / ``decode_scaled`` route here
when ``tile=`` or ``region=`` is given (docs/decoder.md, "Tiled and region decoding").

Tiled (``tile=N, overlap=M``, latent pixels)
    ``decode_head`` (post_quant_conv, conv_in, the mid block with its *global* self-attention)
    runs once on the whole latent, exactly as in the full decode: cheap at latent resolution, and
    attention cannot be tiled exactly. The up path (where the memory is) is the decoder's own
    ``decode_up``, traced and cut before every GroupNorm into segments (``tile_plan``). The latent
    is partitioned into tiles (``spans``: windows of N stepping by N - M, each owning the part up
    to the middle of the shared band), and each segment runs over every tile before the next one
    starts: a tile reads its part plus the segment's halo (the context of that segment's convs,
    1-2 latent pixels) from the whole-image values the previous segments wrote, and writes back
    its part. So every layer runs once per tile, on little more than the tile.

    GroupNorm is what makes tiles disagree: a tile normalised by its own statistics is shifted in
    tone against its neighbour. Here every up-path norm uses the statistics of the *whole image*:
    count, mean and M2 of its input over each tile's part (a partition), accumulated while the
    previous segment writes them and merged with Chan's formula in float64; the norm that starts
    the next segment normalises every tile with them. The result equals the full decode to float
    rounding, for any overlap. Memory: the device holds one tile's working set plus the per-image
    tensors (latents, mid block output, image, mask, output); the values between segments (a few
    whole-image tensors: the norm's input, the ResBlock's residual, the condition features still
    to blend) live in a ``TileState``, host memory by default (docs/decoder.md).

Region (``region="mask"`` or ``"auto"``, ``margin=K``, latent pixels)
    Decode only the bounding box of the mask (union over the batch), grown by K latent pixels
    of unmasked context on each side and clipped to the image, as a decode of its own (its
    GroupNorm statistics are the box's), and take every pixel outside the box from the source
    image. Pixels outside the box are exactly the source (Pre_error 0 there by construction).
    ``region_stats="lowres"`` normalises the box with estimated image-wide statistics instead
    (``asymvq.models.region_stats``: the head on the whole latent, a low-resolution pass for the rest).
    An empty mask decodes nothing and returns the source image unchanged. The geometry and the
    cost model of ``"auto"`` are ``asymvq.models.region``, shared with the exported engines.

Nothing here is exported: ``decode_core`` stays the export graph. Only the torch path tiles (the
decoder's ``ops`` table runs the blends and the condition branch; GroupNorm+SiLU here is plain
torch so that it can take outside statistics).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial

import torch

from .group_stats import Moments, layout, norm_silu
from .region import (  # noqa: F401 (DEFAULT_MARGIN, REGIONS, check_region re-exported)
    DEFAULT_MARGIN,
    DEFAULT_REGION_STATS,
    REGIONS,
    check_region,
    check_region_options,
    choose_region,
    decode_box,
    decode_box_with_context,
    mask_box,
)
from .region_stats import lowres_stats_decode
from .tile_plan import Plan, blend_leaf, condition_leaf, norm_leaf, plan_up_path

# Tiled mode: latent pixels shared by neighbouring tiles' windows. Any overlap is exact (each segment
# reads its own halo, at most 2 latent pixels in these decoders); it only sets where the cuts fall.
DEFAULT_OVERLAP = 4


# -- arguments -----------------------------------------------------------------------------------
def receptive_halo(config) -> int:
    """Latent pixels of context a window edge would need for the whole up path (a decode of a crop).

    The tiled decode no longer crops that way (each segment reads its own halo, ``tile_plan``);
    the number stays the floor of ``tile`` (2 x halo + 1), the tiled API's contract. Counted back from an output
    pixel through the up path, in latent pixels (1 at H/8, 1/2 at
    H/4, ...): 2 (L+1) 3x3 convs per level at H/8, H/4, H/2 and H (L = layers_per_block), the
    upsample convs at H/4, H/2 and H, and conv_out: 3.75 (L+1) + 1, rounded up. Measured as
    the distance beyond which a cropped decode equals the full one (tiny: 9 latent pixels,
    error 2e-6 there, 1e-3 at 7, 0.3 at 3).
    """
    return math.ceil(3.75 * (config.layers_per_block + 1) + 1)


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def check_tiling(tile, overlap, config) -> tuple[int, int]:
    """(tile, overlap) validated; overlap defaults to ``DEFAULT_OVERLAP``."""
    halo = receptive_halo(config)
    min_tile = 2 * halo + 1
    if not _is_int(tile) or tile < min_tile:
        raise ValueError(
            f"tile: expected an integer >= {min_tile} latent pixels for this decoder (2 x its up path's "
            f"receptive field of {halo} latent pixels, plus 1), got {tile!r}"
        )
    if overlap is None:
        overlap = DEFAULT_OVERLAP
    if not _is_int(overlap) or overlap < 0 or overlap >= tile:
        raise ValueError(
            f"overlap: expected an integer in [0, tile) = [0, {tile}) latent pixels shared by neighbouring "
            f"tiles (default {DEFAULT_OVERLAP}; any overlap is exact), got {overlap!r}"
        )
    return tile, overlap


# -- tile geometry ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Span:
    """One tile along one axis, in latent pixels: the window [start, stop) it decodes, the part
    [own0, own1) it owns (a partition of the axis, used for statistics), and its blend weights."""

    start: int
    stop: int
    own0: int
    own1: int
    first: bool
    last: bool


def spans(size: int, tile: int, overlap: int) -> list[Span]:
    """Windows of ``tile`` stepping by ``tile - overlap``; the last one ends at ``size``."""
    if size <= tile:
        return [Span(0, size, 0, size, True, True)]
    step = tile - overlap
    starts = list(range(0, size - tile, step)) + [size - tile]
    cuts = [0] + [(b + a + tile) // 2 for a, b in zip(starts, starts[1:])] + [size]
    n = len(starts)
    return [Span(s, s + tile, cuts[i], cuts[i + 1], i == 0, i == n - 1) for i, s in enumerate(starts)]


# -- the state between segments ---------------------------------------------------------------------
def _same_device(a: torch.device, b: torch.device) -> bool:
    """``cuda`` and ``cuda:0`` alike (an index left out is the current device)."""
    return a.type == b.type and (a.index is None or b.index is None or a.index == b.index)


class TileState:
    """Whole-image tensors of the values that cross a segment boundary, each tile writing its part.

    Each value lives on ``device`` (host memory by default, ``pin``-ned for fast copies to a GPU),
    except that while the values kept on the decode's own device stay within ``device_bytes``, a new
    one is kept there (no transfers; 0, the default, keeps everything on ``device``). A value is freed
    after the last segment that reads it. ``bytes`` / ``peak_bytes``: what it holds on ``device`` now /
    at most (the host memory the tiled decode uses beyond the device's); ``device_peak_bytes`` the
    same for the decode's device; ``moved_bytes``: what went to and from ``device`` (the host <->
    device traffic when the decode runs on a GPU).
    """

    def __init__(self, device="cpu", pin: bool = False, device_bytes: int = 0):
        self.device, self.pin, self.device_bytes = torch.device(device), pin, device_bytes
        self.buffers: dict = {}
        self.bytes = self.peak_bytes = 0
        self.on_device = self.device_peak_bytes = 0
        self.moved_bytes = 0

    def _here(self, buf: torch.Tensor) -> bool:
        return _same_device(buf.device, self.device)

    def read(self, node, s: int, wy, wx, device) -> torch.Tensor:
        buf = self.buffers[node]
        part = _crop(buf, s, wy, wx, device)
        if self._here(buf):
            self.moved_bytes += part.numel() * part.element_size()
        return part

    def write(self, node, part: torch.Tensor, full_hw: tuple[int, int], at: tuple[int, int]) -> None:
        buf = self.buffers.get(node)
        if buf is None:
            nbytes = part.shape[0] * part.shape[1] * full_hw[0] * full_hw[1] * part.element_size()
            if not _same_device(part.device, self.device) and self.on_device + nbytes <= self.device_bytes:
                dev, pin = part.device, False
                self.on_device += nbytes
                self.device_peak_bytes = max(self.device_peak_bytes, self.on_device)
            else:
                dev, pin = self.device, self.pin and self.device.type == "cpu"
                self.bytes += nbytes  # counted before allocating: readers see the buffer as state at once
                self.peak_bytes = max(self.peak_bytes, self.bytes)
            buf = torch.empty(*part.shape[:2], *full_hw, dtype=part.dtype, device=dev, pin_memory=pin,
                              memory_format=layout(part))
            self.buffers[node] = buf
        y, x = at
        buf[:, :, y:y + part.shape[-2], x:x + part.shape[-1]].copy_(part)
        if self._here(buf):
            self.moved_bytes += part.numel() * part.element_size()

    def free(self, node) -> None:
        buf = self.buffers.pop(node, None)
        if buf is not None:
            nbytes = buf.numel() * buf.element_size()
            if self._here(buf):
                self.bytes -= nbytes
            else:
                self.on_device -= nbytes


# -- the up path tile by tile, segment by segment ---------------------------------------------------
def _run_node(node, env, plan: Plan, ops, stats, per_tile_norm):
    args = torch.fx.node.map_arg(node.args, env.__getitem__)
    kwargs = torch.fx.node.map_arg(node.kwargs, env.__getitem__)
    if node.op == "call_module":
        return plan.root.get_submodule(node.target)(*args, **kwargs)
    if node.op == "call_method":
        return getattr(args[0], node.target)(*args[1:], **kwargs)
    if node.target is norm_leaf:
        return norm_silu(args[0], plan.root.get_submodule(args[1]), None if per_tile_norm else stats[node.args[0]])
    if node.target is blend_leaf:
        return ops.blend(*args)
    if node.target is condition_leaf:
        name, image, mask, h = args
        h, feats = ops.condition_blend(plan.root.get_submodule(name), image, mask, h)
        return (h, *feats)
    return node.target(*args, **kwargs)


def _crop(t: torch.Tensor, s: int, wy, wx, device) -> torch.Tensor:
    """Window (latent rows ``wy``, columns ``wx``) of a whole-image tensor at ``s`` pixels per latent pixel."""
    return t[:, :, wy[0] * s:wy[1] * s, wx[0] * s:wx[1] * s].to(device, non_blocking=True)


def tiled_decode(dec, latents, image, mask, tile: int, overlap: int, *, per_tile_norm: bool = False,
                 state: TileState | None = None) -> torch.Tensor:
    """Decode VAE-space ``latents`` (checked) tile by tile; see the module doc.

    The head (mid block) on the whole latent, then each segment of the up path (``tile_plan``) over
    every tile before the next: each layer runs once per tile, on the tile's part plus the
    segment's halo. ``per_tile_norm=True`` normalises each tile's window by itself (diffusers' way;
    kept to measure what the statistics buy). ``state``: where the values between segments live
    (default: host memory on CUDA, the decode's device otherwise); pass one to read its ``peak_bytes``.
    """
    B, _, h, w = latents.shape
    ys, xs = spans(h, tile, overlap), spans(w, tile, overlap)
    if len(ys) == len(xs) == 1:  # one tile is the whole image: the full decode, exactly
        return dec.decode_core(latents, image, mask)
    plan = plan_up_path(dec, image is not None)
    ops = dec._ops
    if state is None:  # host memory on an accelerator; on the CPU (or meta, to count FLOPs) the same device
        cuda = latents.device.type == "cuda"
        state = TileState("cpu" if cuda else latents.device, pin=cuda)
    inputs = dict(zip(plan.placeholders, (dec.decode_head(latents), image, mask)))
    stats = {}
    for node, groups in plan.norm_inputs.items():
        if node in inputs:  # a placeholder (the mid block's output) is whole: its statistics directly
            st = Moments()
            st.add(inputs[node], groups)
            stats[node] = st.finish()

    def window(a: Span, seg, size: int) -> tuple[int, int]:
        """The tile's part [own0, own1) grown by the segment's halo, clipped to the latent."""
        return max(a.own0 - seg.halo, 0), min(a.own1 + seg.halo, size)

    out = None
    for k, seg in enumerate(plan.segments):
        collect = {n: Moments() for n in seg.outputs if n in plan.norm_inputs}
        for sy in ys:
            wy = window(sy, seg, h)
            for sx in xs:
                wx = window(sx, seg, w)
                env = dict(plan.constants)
                env.update({a: _crop(inputs[a], int(plan.scale[a]), wy, wx, latents.device) if a in inputs
                            else state.read(a, int(plan.scale[a]), wy, wx, latents.device) for a in seg.inputs})
                for n in seg.nodes:
                    env[n] = _run_node(n, env, plan, ops, stats, per_tile_norm)
                for n in seg.outputs:
                    s = int(plan.scale[n])
                    oy, ox = (sy.own0 - wy[0]) * s, (sx.own0 - wx[0]) * s
                    part = env[n][:, :, oy:oy + (sy.own1 - sy.own0) * s, ox:ox + (sx.own1 - sx.own0) * s]
                    if n is plan.result:  # the image: on the decoder's device, not state
                        if out is None:
                            out = torch.empty(*part.shape[:2], h * s, w * s, dtype=part.dtype, device=part.device,
                                              memory_format=layout(part))
                        out[:, :, sy.own0 * s:sy.own1 * s, sx.own0 * s:sx.own1 * s] = part
                        continue
                    state.write(n, part, (h * s, w * s), (sy.own0 * s, sx.own0 * s))
                    if n in collect:
                        collect[n].add(part, plan.norm_inputs[n])
                del env
        stats.update({n: st.finish() for n, st in collect.items()})
        for n in seg.inputs:
            if plan.last_use.get(n) == k and n not in inputs:
                state.free(n)
    return out


# -- region decoding --------------------------------------------------------------------------------
def region_decode(dec, latents, image, mask, margin: int, tile: int | None = None,
                  overlap: int | None = None, box=None, source=None,
                  stats: str = DEFAULT_REGION_STATS) -> torch.Tensor:
    """Decode the mask's box grown by ``margin`` (or ``box``, latent pixels y0, y1, x0, x1; tiled when
    ``tile`` is given), normalised with ``stats`` (``asymvq.models.region_stats``); the rest is ``source``
    (default ``image``). "box": a decode of the crops (``asymvq.models.region.decode_box``); "lowres": a decode of
    the box that reads the whole image (``decode_box_with_context``)."""
    if box is None:
        box = mask_box(mask, margin, latents.shape[-2], latents.shape[-1])
    out_dtype = dec.conv_out.weight.dtype
    if stats == "lowres":
        return decode_box_with_context(partial(lowres_stats_decode, dec), latents, image, mask, box, out_dtype,
                                       source=source)

    def run(lat, img, msk):
        return tiled_decode(dec, lat, img, msk, tile, overlap) if tile is not None else dec.decode_core(lat, img, msk)

    return decode_box(run, latents, image, mask, box, out_dtype, source=source)


def decode_modes(dec, latents, image, mask, *, tile=None, overlap=None, region=None, margin=None,
                 source=None, region_stats=None) -> torch.Tensor:
    """What ``AsymmetricDecoder.forward`` runs when any of tile/overlap/region/margin/region_stats is given
    (inputs already checked and cast). ``region="auto"``: the box when the cost model says it pays
    (``asymvq.models.region.choose_region``, for the statistics asked), the whole image otherwise."""
    if tile is None and overlap is not None:
        raise ValueError(f"overlap: only with tile=N (latent pixels), got overlap={overlap!r} without a tile")
    region, margin, stats = check_region_options(region, margin, region_stats)
    if stats == "lowres" and tile is not None:
        raise ValueError(f"region_stats: {stats!r} decodes the box in one piece, not tiled; drop tile= or use "
                         "region_stats='box'")
    if tile is not None:
        tile, overlap = check_tiling(tile, overlap, dec.config)
    if region is not None:
        if image is None:
            raise ValueError(f"region: {region!r} decodes around the mask; pass image and mask (or leave region=None)")
        choice = choose_region(region, mask, margin, latents.shape[-2], latents.shape[-1], stats=stats)
        if choice.decodes_box or choice.empty:
            return region_decode(dec, latents, image, mask, margin, tile, overlap, box=choice.box, source=source,
                                 stats=stats)
        if tile is None:
            return dec.decode_core(latents, image, mask)
    return tiled_decode(dec, latents, image, mask, tile, overlap)
