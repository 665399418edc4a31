"""Region decoding against the full decode at 512x512 (tiny by default) (masks of 5/20/60 %, margins
0/2/4/8 at 20 %): time speed-up, PSNR in the box and the hole, pixels outside the box, the seam.
Run: .venv/bin/python bench/decoder_region.py [PRESET [AREAS]] -> bench/results/decoder_region_PRESET512.json"""
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import psnr
from decoder_scaling import _box_mask, centred_mask, seam

from asymvq.models.sources import random_decoder
from asymvq.models.tiled_decode import mask_box

PRESET = sys.argv[1] if len(sys.argv) > 1 else "tiny"
AREAS = tuple(float(a) for a in sys.argv[2].split(",")) if len(sys.argv) > 2 else (0.05, 0.2, 0.6)
dec = random_decoder(PRESET)
size = 512
g = torch.Generator().manual_seed(0)
lat = torch.randn(1, 4, 64, 64, generator=g)
img = torch.rand(1, 3, size, size, generator=g) * 2 - 1
res = []
with torch.inference_mode():
    for area in AREAS:
        mask = centred_mask(size, area)
        t = time.perf_counter()
        full = dec.decode_core(lat, img, mask)
        tf = time.perf_counter() - t
        for margin in ((0, 2, 4, 8) if area == 0.2 and PRESET == "tiny" else (4,)):
            y0, y1, x0, x1 = mask_box(mask, margin, 64, 64)
            t = time.perf_counter()
            y = dec(lat, img, mask, region="mask", margin=margin)
            tr = time.perf_counter() - t
            box = (slice(None), slice(None), slice(8 * y0, 8 * y1), slice(8 * x0, 8 * x1))
            hole = mask.expand_as(y) > 0.5
            r = dict(area=area, margin=margin, box_area=(y1-y0)*(x1-x0)/4096, full_s=tf, region_s=tr, speedup=tf/tr,
                     psnr_box=psnr(y[box], full[box], 2.0), psnr_hole=psnr(y[hole], full[hole], 2.0),
                     outside_eq_source=bool(torch.equal(y[_box_mask(y, box)], img.expand_as(y)[_box_mask(y, box)])),
                     seam=seam(y, full, img, box))
            print(json.dumps(r), flush=True)
            res.append(r)
json.dump(res, open(Path(__file__).resolve().parent / "results" / f"decoder_region_{PRESET}512.json", "w"), indent=1)
