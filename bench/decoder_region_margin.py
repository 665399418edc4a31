"""How far a region decode is from the full decode inside the box, against the margin (seeded random weights).
Not a test; PSNR does not depend on the machine's load, so this runs on a shared machine.

For each preset, size and mask (a centred square of 5 % / 20 % of the image, off the latent grid) and each
margin, three decodes of the same box against the full decode, PSNR over the hole and over the mask's own box
(margin 0), peak-to-peak 2:

- ``region``: what ships (``region="mask"``): the crop decoded on its own, head (mid block attention) and
  every GroupNorm on the crop;
- ``whole_head``: the head on the whole latent (as the tiled decode does), the up path on the crop with
  the crop's own GroupNorm statistics;
- ``whole_stats``: the head on the whole latent and every up-path GroupNorm with the *whole image's*
  statistics (recorded from the full decode): what is left is only what the margin cuts off of the up path's
  receptive field, the difference the margin can buy back.

    .venv/bin/python bench/decoder_region_margin.py [--presets tiny,base] [--sizes 512,256]
Writes bench/results/decoder_region_margin.json.
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

from asymvq.models.ops import TorchOps, ops_override
from asymvq.models.region import SCALE, mask_box, predicted_speedup
from asymvq.models.sources import random_decoder

ROOT = Path(__file__).resolve().parent.parent
MARGINS = (0, 1, 2, 3, 4, 6, 8, 12, 16, 24)


class _Stats(TorchOps):
    """GroupNorm+SiLU that records each call's per-(image, group) mean and variance, or replays them in order."""

    def __init__(self, replay=None):
        self.recorded, self.replay, self.i = [], replay, 0

    def group_norm_silu(self, x, norm):
        b, c = x.shape[:2]
        xg = x.reshape(b, norm.num_groups, -1).float()
        if self.replay is None:
            var, mean = torch.var_mean(xg, dim=-1, correction=0)
            self.recorded.append((mean, var))
        else:
            mean, var = self.replay[self.i]
            self.i += 1
        y = ((xg - mean[..., None]) * torch.rsqrt(var[..., None] + norm.eps)).to(x.dtype).reshape(x.shape)
        return F.silu(y * norm.weight.view(1, c, 1, 1) + norm.bias.view(1, c, 1, 1))


def measure(preset: str, size: int, areas, margins) -> list[dict]:
    dec = random_decoder(preset).eval()
    g = torch.Generator().manual_seed(0)
    h = size // SCALE
    lat = torch.randn(1, 4, h, h, generator=g)
    img = torch.rand(1, 3, size, size, generator=g) * 2 - 1
    out = []
    with torch.inference_mode():
        head = dec.decode_head(lat)
        for area, mask, full, full_s, rec, hole, own in area_decodes(dec, lat, img, head, areas, _Stats):
            for margin in margins:
                y0, y1, x0, x1 = mask_box(mask, margin, h, h)
                pix = (slice(None), slice(None), slice(SCALE * y0, SCALE * y1), slice(SCALE * x0, SCALE * x1))
                crops = (lat[:, :, y0:y1, x0:x1], img[pix], mask[pix])
                t0 = time.perf_counter()
                region = dec(lat, img, mask, region="mask", margin=margin)
                region_s = time.perf_counter() - t0
                whole_head = img.clone()
                whole_head[pix] = dec.decode_up(head[:, :, y0:y1, x0:x1], crops[1], crops[2])
                whole_stats = img.clone()
                with ops_override(_Stats(replay=rec.recorded)):
                    whole_stats[pix] = dec.decode_up(head[:, :, y0:y1, x0:x1], crops[1], crops[2])
                share = (y1 - y0) * (x1 - x0) / (h * h)
                point = {"preset": preset, "size": size, "mask_area": area, "margin": margin,
                         "box_latent": [y0, y1, x0, x1], "box_share": share,
                         "predicted_speedup": predicted_speedup(share), "full_s": full_s, "region_s": region_s}
                for name, y in (("region", region), ("whole_head", whole_head), ("whole_stats", whole_stats)):
                    for where, sel in (("hole", hole), ("mask_box", own)):
                        db = psnr(y[sel], full[sel], 2.0)
                        point[f"{name}_psnr_{where}_db"] = None if math.isinf(db) else db  # None: equal
                print(json.dumps({k: (round(v, 3) if isinstance(v, float) else v) for k, v in point.items()}), flush=True)
                out.append(point)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--presets", default="tiny,base")
    ap.add_argument("--sizes", default="512,256", help="one size per preset, in the same order")
    ap.add_argument("--areas", default="0.05,0.2")
    ap.add_argument("--margins", default=",".join(map(str, MARGINS)))
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "decoder_region_margin.json")
    a = ap.parse_args()
    torch.manual_seed(0)
    start = loadavg()
    points = []
    for preset, size in zip(a.presets.split(","), map(int, a.sizes.split(","))):
        points += measure(preset, size, [float(x) for x in a.areas.split(",")], [int(x) for x in a.margins.split(",")])
    result = {"cpu": cpu_record(), "machine": {"threads": torch.get_num_threads(), "torch": torch.__version__, "loadavg_start": start,
                          "loadavg_end": loadavg(),
                          "note": "PSNR is load-independent; the times are not (shared machine) and are not claims"},
              "weights": "seeded random (asymvq.models.sources.random_decoder); real-weight behaviour unmeasured",
              "points": points}
    a.out.write_text(json.dumps(result, indent=1) + "\n")
    print("wrote", a.out)


if __name__ == "__main__":
    main()
