"""Which GroupNorm statistics bring a region decode close to the full decode, and what they cost (seeded random
weights). Not a test; PSNR and counted FLOPs do not depend on the machine's load, so this runs on a shared machine.

A region decode (``region="mask"``) decodes the mask's box (+ margin) as a decode of its own: every GroupNorm,
and the mid block's attention, sees only the box (``bench/decoder_region_margin.py``: 4-14 dB in the hole at
margin 4, and no margin fixes it). Here, at margin 4, the same box decoded with other statistics, against the
full decode (PSNR over the hole and over the mask's own box, peak-to-peak 2), and each one's FLOPs as a fraction
of the full decode's (``asymvq.profiling.flops.count`` on the meta device: convolutions and matmuls):

- ``box``: what ships by default (``region_stats="box"``);
- ``whole_head`` (a): the head (post_quant_conv, conv_in, mid block with its attention) on the whole latent,
  the up path on the box with its own statistics;
- ``exact_h8``, ``exact_h8_h4`` (a+b): and the norms of the H/8 (and H/4) level with the whole image's
  statistics; they cost the condition branch and those levels on the whole image (taken here from the full
  decode's, which are those numbers);
- ``lowres{f}_plain`` (c): every norm (the head's resnets too) with the statistics of a plain decode of the
  latent, image and mask strided by f; ``head_lowres{f}_plain`` (a+c): the same from the whole head's output;
- ``head_lowres{f}_merged`` (a+c): each norm merges the box's own moments (exact there) with the low-resolution
  pass's moments *outside* the box; ``..._excl``: outside the box grown by ``EXCLUDE_GROWTH`` latent pixels
  (``asymvq.models.region_stats``);
- ``head_exact_h8_lowres4_merged_excl`` (a+b+c);
- ``lowres``: what ``region_stats="lowres"`` runs (``head_lowres{f}_merged_excl`` at ``lowres_factor``; checked equal);
- ``whole_stats``: every norm with the full decode's statistics (the bound: only the receptive-field cut is left).

    .venv/bin/python bench/decoder_region_stats.py [--presets tiny,tiny-asuka,base,x1.5] [--sizes 256,512] [--kinds iid]
Writes bench/results/decoder_region_stats.json (``--merge``: adds to the points already there).
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from bench_common import cpu_record, loadavg, psnr
from region_common import area_decodes

from asymvq.models.decoder import AsymmetricDecoder
from asymvq.models.group_stats import Moments, norm_silu
from asymvq.models.ops import TorchOps, ops_override
from asymvq.models.region import SCALE, lowres_factor, mask_box
from asymvq.models.region_stats import EXCLUDE_GROWTH, MergedStats, lowres_outside, merged_box_decode
from asymvq.models.sources import random_decoder
from asymvq.models.tiled_decode import region_decode
from asymvq.profiling.flops import METHOD, count

ROOT = Path(__file__).resolve().parent.parent
MARGIN = 4


class Record(TorchOps):
    """A plain decode that records each norm module's (mean, var) per (image, group)."""

    def __init__(self):
        self.stats = {}

    def group_norm_silu(self, x, norm):
        st = Moments()
        st.add(x, norm.num_groups)
        self.stats[norm] = st.finish()
        return norm_silu(x, norm, self.stats[norm])


class Given(MergedStats):
    """``MergedStats`` where the norms in ``given`` take those (mean, var) instead."""

    def __init__(self, given: dict, outside=None, image_hw=None, box_hw=None):
        super().__init__(TorchOps(), outside or {}, image_hw, box_hw)
        self.given = given

    def group_norm_silu(self, x, norm):
        if norm in self.given:
            return norm_silu(x, norm, self.given[norm])
        return super().group_norm_silu(x, norm)


def level_norms(dec, levels) -> set:
    return {m for i in levels for m in dec.up_blocks[i].modules() if isinstance(m, torch.nn.GroupNorm)}


def inputs(kind: str, size: int, channels: int, g):
    """``iid``: normal latents, uniform image (decoder_region_margin's); ``smooth``: both low-pass (spatially
    correlated, as real latents and images are), to see whether strided sampling holds up there."""
    h = size // SCALE
    if kind == "iid":
        return torch.randn(1, channels, h, h, generator=g), torch.rand(1, 3, size, size, generator=g) * 2 - 1
    lat = F.interpolate(torch.randn(1, channels, h // 4, h // 4, generator=g), scale_factor=4, mode="bilinear") * 1.5
    lat = lat + 0.3 * torch.randn(1, channels, h, h, generator=g)
    img = F.interpolate(torch.rand(1, 3, size // 32, size // 32, generator=g) * 2 - 1, scale_factor=32, mode="bicubic")
    return lat, (img + 0.05 * torch.randn(1, 3, size, size, generator=g)).clamp(-1, 1)


def strided(f, *ts):
    return tuple(t[:, :, ::f, ::f] for t in ts)


def crops(dec, lat, img, mask, head, box, full_stats) -> dict:
    """Every variant's decode of ``box`` (B, 3, 8 box_h, 8 box_w)."""
    h, w = lat.shape[-2:]
    y0, y1, x0, x1 = box
    lc = (slice(None), slice(None), slice(y0, y1), slice(x0, x1))
    pc = (slice(None), slice(None), slice(SCALE * y0, SCALE * y1), slice(SCALE * x0, SCALE * x1))
    hw, bhw = (h, w), (y1 - y0, x1 - x0)

    def up(table):
        with ops_override(table):
            return dec.decode_up(head[lc], img[pc], mask[pc])

    out = {"whole_head": dec.decode_up(head[lc], img[pc], mask[pc])}
    for name, levels in (("exact_h8", [0]), ("exact_h8_h4", [0, 1])):
        out[name] = up(Given({n: full_stats[n] for n in level_norms(dec, levels)}))
    for f in (2, 4):
        rec = Record()
        with ops_override(rec):
            dec.decode_core(*strided(f, lat, img, mask))
        with ops_override(Given(rec.stats)):
            out[f"lowres{f}_plain"] = dec.decode_core(lat[lc], img[pc], mask[pc])
        rec = Record()
        with ops_override(rec):
            dec.decode_up(*strided(f, head, img, mask))
        out[f"head_lowres{f}_plain"] = up(Given(rec.stats))
        for suffix, growth in (("merged", 0), ("merged_excl", EXCLUDE_GROWTH)):
            outside = lowres_outside(dec, head, img, mask, box, f, growth)
            out[f"head_lowres{f}_{suffix}"] = merged_box_decode(dec, head, img, mask, box,
                                                                MergedStats(dec._ops, outside, hw, bhw))
            if f == 4 and growth:
                exact = {n: full_stats[n] for n in level_norms(dec, [0])}
                out["head_exact_h8_lowres4_merged_excl"] = up(Given(exact, outside, hw, bhw))
    out["whole_stats"] = up(Given(full_stats))
    return out


# -- FLOPs, counted on the meta device --------------------------------------------------------------------
def flops(preset: str, size: int, box) -> dict:
    """FLOPs of each variant / the full decode's (and the full decode's, absolute)."""
    with torch.device("meta"):
        dec = AsymmetricDecoder(preset).eval()
        h = size // SCALE
        lat = torch.empty(1, dec.config.latent_channels, h, h)
        img, mask = torch.empty(1, 3, size, size), torch.empty(1, 1, size, size)
        head = torch.empty(1, dec.config.block_out_channels[-1], h, h)
    y0, y1, x0, x1 = box
    lc = (slice(None), slice(None), slice(y0, y1), slice(x0, x1))
    pc = (slice(None), slice(None), slice(SCALE * y0, SCALE * y1), slice(SCALE * x0, SCALE * x1))

    def prefix(k):  # the whole image up to the last norm of level k-1: what exact statistics there cost
        x, _ = dec.ops.condition_blend(dec.condition_encoder, img, mask, head)
        for b in dec.up_blocks[:k - 1]:
            x = b(x)
        for r in dec.up_blocks[k - 1].resnets:
            x = r(x)

    def n(fn, *a):
        return count(fn, *a)["flops"]

    full, hd = n(dec.decode_core, lat, img, mask), n(dec.decode_head, lat)
    crop_core, crop_up = n(dec.decode_core, lat[lc], img[pc], mask[pc]), n(dec.decode_up, head[lc], img[pc], mask[pc])
    sub_core = {f: n(dec.decode_core, *strided(f, lat, img, mask)) for f in (2, 4)}
    sub_up = {f: n(dec.decode_up, *strided(f, head, img, mask)) for f in (2, 4)}
    pre = {k: n(prefix, k) for k in (1, 2)}
    costs = {"box": crop_core, "whole_head": hd + crop_up, "exact_h8": hd + pre[1] + crop_up,
             "exact_h8_h4": hd + pre[2] + crop_up, "whole_stats": full + crop_up,
             "head_exact_h8_lowres4_merged_excl": hd + pre[1] + sub_up[4] + crop_up,
             "lowres": n(lambda: region_decode(dec, lat, img, mask, MARGIN, box=box, stats="lowres"))}
    for f in (2, 4):
        costs[f"lowres{f}_plain"] = sub_core[f] + crop_core
        for name in ("plain", "merged", "merged_excl"):
            costs[f"head_lowres{f}_{name}"] = hd + sub_up[f] + crop_up
    f = lowres_factor(h, h)
    same = full if box == (0, h, 0, h) else costs[f"head_lowres{f}_merged_excl"]  # a whole-image box: decoded plainly
    assert costs["lowres"] == same, "region_stats='lowres' runs more than counted"
    return {"full_flops": full, "frac": {k: v / full for k, v in costs.items()}}


def measure(preset: str, size: int, kind: str, areas) -> list[dict]:
    dec = random_decoder(preset).eval()
    g = torch.Generator().manual_seed(0)
    lat, img = inputs(kind, size, dec.config.latent_channels, g)
    h = size // SCALE
    out = []
    with torch.inference_mode():
        head = dec.decode_head(lat)
        for area, mask, full, full_s, rec, hole, own in area_decodes(dec, lat, img, head, areas, Record):
            times = {"full_s": full_s}
            box = mask_box(mask, MARGIN, h, h)
            y0, y1, x0, x1 = box
            pix = (slice(None), slice(None), slice(SCALE * y0, SCALE * y1), slice(SCALE * x0, SCALE * x1))
            decoded = {}
            for name, stats in (("box", "box"), ("lowres", "lowres")):
                t0 = time.perf_counter()
                decoded[name] = dec(lat, img, mask, region="mask", margin=MARGIN, region_stats=stats)
                times[f"{name}_s"] = time.perf_counter() - t0
            for name, crop in crops(dec, lat, img, mask, head, box, rec.stats).items():
                y = img.expand_as(full).clone()
                y[pix] = crop
                decoded[name] = y
            f = lowres_factor(h, h)
            # a box that is the whole image is decoded plainly by region_stats="lowres" (its own statistics are the
            # image's), not through the merged pass this benchmark writes out
            same = full if box == (0, h, 0, h) else decoded[f"head_lowres{f}_merged_excl"]
            assert torch.equal(decoded["lowres"], same), "region_stats='lowres' is not the variant it is counted as"
            cost = flops(preset, size, box)
            point = {"preset": preset, "size": size, "inputs": kind, "mask_area": area, "margin": MARGIN,
                     "box_latent": list(box), "box_share": (y1 - y0) * (x1 - x0) / (h * h), "lowres_factor": f,
                     "full_flops": cost["full_flops"], "times_under_load": times, "loadavg": loadavg(), "variants": {}}
            for name, y in decoded.items():
                v = {f"psnr_{where}_db": psnr(y[sel], full[sel], 2.0) for where, sel in (("hole", hole), ("mask_box", own))}
                v = {k: (None if math.isinf(x) else round(x, 2)) for k, x in v.items()}  # None: equal
                v["flops_frac"] = round(cost["frac"][name], 4)
                v["extra_flops_frac"] = round(cost["frac"][name] - cost["frac"]["box"], 4)
                point["variants"][name] = v
            brief = {k: (v["psnr_hole_db"], v["extra_flops_frac"]) for k, v in point["variants"].items()}
            print(json.dumps({"preset": preset, "size": size, "inputs": kind, "area": area,
                              "share": round(point["box_share"], 3), **brief}), flush=True)
            out.append(point)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--presets", default="tiny,tiny-asuka,base,x1.5")
    ap.add_argument("--sizes", default="256,512")
    ap.add_argument("--kinds", default="iid", help="inputs: iid and/or smooth")
    ap.add_argument("--areas", default="0.05,0.2,0.25")
    ap.add_argument("--merge", action="store_true", help="add to the points of --out instead of replacing them")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "decoder_region_stats.json")
    a = ap.parse_args()
    start = loadavg()
    points = json.loads(a.out.read_text())["points"] if a.merge and a.out.exists() else []
    for preset in a.presets.split(","):
        for size in map(int, a.sizes.split(",")):
            for kind in a.kinds.split(","):
                points += measure(preset, size, kind, [float(x) for x in a.areas.split(",")])
    result = {"cpu": cpu_record(), "machine": {"threads": torch.get_num_threads(), "torch": torch.__version__,
                                               "loadavg_start": start, "loadavg_end": loadavg(),
                                               "note": "PSNR and FLOPs are load-independent; the times are one run "
                                                       "each on a shared machine: an ordering, not claims"},
              "weights": "seeded random (asymvq.models.sources.random_decoder); real-weight behaviour unmeasured",
              "flops_method": METHOD + "; the statistics' own elementwise work is not counted",
              "points": points}
    a.out.write_text(json.dumps(result, indent=1) + "\n")
    print("wrote", a.out)


if __name__ == "__main__":
    main()
