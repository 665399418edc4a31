"""Tiled and region decoding (asymvq.models.tiled_decode), tiny preset, small sizes, fp32.

Tiled: against the full decode, PSNR >= 50 dB with and without mask, non-square, batch 2 over
one image, the mask's edges crossing tile cuts; the image-wide GroupNorm statistics are what get
it there (per-tile normalisation, diffusers' way, is measured far below). Peak tensor memory of
the tiled decode grows only by the per-image state (output, latent-level tensors) when the
image grows with the same tile, while the full decode's grows with the image.
Region: pixels outside the box are the source exactly, the box is the crop's own decode, an
empty mask returns the source. Bad arguments: ValueError naming the argument.
"""
from __future__ import annotations

import math
import weakref

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from asymvq.models.config import DecoderConfig
from asymvq.models.decoder import AsymmetricDecoder
from asymvq.models.tiled_decode import mask_box, receptive_halo, spans

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


# The tiny preset's topology (halo 9) at half its width: the tiled decode re-runs the up path once
# per GroupNorm, so the tests use the cheapest decoder that has every part.
MICRO = DecoderConfig((8, 16, 32, 32), 1, norm_num_groups=4)


@pytest.fixture(scope="module")
def dec():
    torch.manual_seed(0)
    return AsymmetricDecoder(MICRO).eval()


def make(h, w, batch=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    lat = torch.randn(batch, 4, h, w, generator=g)
    img = torch.rand(1, 3, 8 * h, 8 * w, generator=g) * 2 - 1
    mask = torch.zeros(1, 1, 8 * h, 8 * w)
    # off the latent grid; its edges cross the tile cuts used below
    mask[..., 8 * h // 5 + 3: 8 * h * 3 // 4 + 5, 8 * w // 3 + 1: 8 * w * 4 // 5 - 3] = 1
    return lat, img, mask


def psnr(a, b, peak=2.0):
    mse = float(((a.double() - b.double()) ** 2).mean())
    return math.inf if mse == 0 else 10 * math.log10(peak * peak / mse)


# -- tiled --------------------------------------------------------------------------------------------
def test_halo_is_the_receptive_field(dec):
    # 3.75 (L + 1) + 1 latent pixels, rounded up: tiny 9, base 13, x1.5 16, x2 24
    assert receptive_halo(dec.config) == 9
    from asymvq.models.config import preset_config

    assert [receptive_halo(preset_config(p)) for p in ("base", "x1.5", "x2")] == [13, 16, 24]


def test_spans_partition_the_axis():
    for size, tile, overlap in ((26, 20, 18), (100, 32, 18), (19, 20, 18), (64, 40, 8)):
        s = spans(size, tile, overlap)
        assert s[0].start == 0 and s[-1].stop == size
        assert [a.own1 for a in s[:-1]] == [b.own0 for b in s[1:]] and s[0].own0 == 0 and s[-1].own1 == size
        for a in s:
            assert a.stop - a.start == min(tile, size)
            # every owned pixel is >= overlap/2 from a cut tile edge (image borders are exact)
            assert a.first or a.own0 - a.start >= overlap // 2
            assert a.last or a.stop - a.own1 >= overlap // 2


@pytest.mark.parametrize("cond", [True, False], ids=["mask", "no-mask"])
def test_tiled_matches_full(dec, cond):
    # non-square, 2 tiles of 19 (the smallest; default overlap 18) along one axis or the other, the
    # cut through the hole
    lat, img, mask = make(20, 13) if cond else make(13, 20)
    args = (img, mask) if cond else ()
    with torch.inference_mode():
        full = dec(lat, *args)
        tiled = dec(lat, *args, tile=19)
    assert tiled.shape == full.shape
    assert psnr(tiled, full) >= 50.0
    assert float((tiled - full).abs().max()) < 1e-3


def test_per_tile_normalisation_is_what_breaks_tiling(dec):
    """The same tiles normalised each by itself (diffusers' tiled_decode) are far off."""
    from asymvq.models.tiled_decode import tiled_decode

    lat, img, mask = make(20, 20)
    with torch.inference_mode():
        full = dec(lat, img, mask)
        own = tiled_decode(dec, lat, img, mask, 19, 18, per_tile_norm=True)
    assert psnr(own, full) < 40.0


def test_decode_scaled_takes_the_same_keywords(dec):
    lat, img, mask = make(20, 12)
    with torch.inference_mode():
        a = dec.decode_scaled(lat * dec.config.scaling_factor, img, mask, region="mask", margin=1)
        b = dec(lat, img, mask, region="mask", margin=1)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_one_tile_is_the_full_decode(dec):
    lat, img, mask = make(12, 10)
    with torch.inference_mode():
        assert torch.equal(dec(lat, img, mask, tile=19), dec(lat, img, mask))


class TensorPeak(TorchDispatchMode):
    """Peak bytes of tensor storages created inside the mode (allocator-independent)."""

    def __init__(self):
        super().__init__()
        self.live: dict[int, int] = {}
        self.now = self.peak = 0

    def _free(self, key):
        self.now -= self.live.pop(key, 0)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.device.type == "cpu":
                st = t.untyped_storage()
                key = st.data_ptr()
                if st.nbytes() and key not in self.live:
                    self.live[key] = st.nbytes()
                    self.now += st.nbytes()
                    self.peak = max(self.peak, self.now)
                    weakref.finalize(st, self._free, key)
        return out


def peak_bytes(fn) -> int:
    with torch.inference_mode(), TensorPeak() as p:
        fn()
    return p.peak


def test_tiled_memory_is_bounded_by_the_tile(dec):
    """Same tile, 1.6x the pixels: the tiled peak rises by the per-image state only, the full one with the image.
    (Measured at 152x272 -> 152x512: tiled 10.6 -> 11.7 MB, full 16.9 -> 31.8 MB; docs/decoder.md.)"""
    small, big = make(19, 30), make(19, 49)  # 2 and 3 tiles of 19 (overlap 4: memory, not exactness)
    tiled = [peak_bytes(lambda a=a: dec(*a, tile=19, overlap=4)) for a in (small, big)]
    full = [peak_bytes(lambda a=a: dec(*a)) for a in (small, big)]
    added_px = 152 * 8 * (49 - 30)
    # per-image state of the tiled decode, floats per image pixel: the output (3), the checked mask and
    # its crops (2), the mid block's latent-level tensors (32 channels at 1/64 of the pixels, ~6 alive: 3)
    assert tiled[1] - tiled[0] <= 4 * 8 * added_px, (tiled, full)
    assert full[1] - full[0] > 4 * 50 * added_px, (tiled, full)  # the full decode: ~100 floats a pixel
    assert tiled[1] < full[1] / 2, (tiled, full)


# -- region ---------------------------------------------------------------------------------------
def test_region_outside_box_is_the_source_and_box_is_its_own_decode(dec):
    lat, img, mask = make(24, 30, batch=2)
    with torch.inference_mode():
        out = dec(lat, img, mask, region="mask", margin=2)
        y0, y1, x0, x1 = mask_box(mask, 2, 24, 30)
        assert (y0, x0) != (0, 0) and (y1, x1) != (24, 30)
        box = (slice(None), slice(None), slice(8 * y0, 8 * y1), slice(8 * x0, 8 * x1))
        inside = dec(lat[:, :, y0:y1, x0:x1], img[box], mask[box])
    outside = torch.ones_like(out, dtype=torch.bool)
    outside[box] = False
    assert torch.equal(out[outside], img.expand_as(out)[outside])  # Pre_error 0 there
    assert torch.equal(out[box], inside)


def test_region_whole_image_box_is_the_full_decode_and_tiles(dec):
    lat, img, mask = make(20, 12)
    with torch.inference_mode():
        full = dec(lat, img, mask)
        assert torch.equal(dec(lat, img, mask, region="mask", margin=100), full)
        assert psnr(dec(lat, img, mask, region="mask", margin=100, tile=19), full) >= 50


def test_region_empty_mask_returns_the_source(dec):
    lat, img, _ = make(12, 10, batch=2)
    with torch.inference_mode():
        out = dec(lat, img, torch.zeros(1, 1, 96, 80), region="mask")
    assert out.shape == (2, 3, 96, 80)
    assert torch.equal(out, img.expand(2, -1, -1, -1))


# -- bad input ------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, arg", [
    (dict(tile=18), "tile"), (dict(tile=0), "tile"), (dict(tile=20.0), "tile"), (dict(tile=True), "tile"),
    (dict(tile=20, overlap=20), "overlap"), (dict(tile=20, overlap=25), "overlap"), (dict(tile=20, overlap=-1), "overlap"),
    (dict(overlap=4), "overlap"), (dict(region="mask", margin=-1), "margin"), (dict(region="mask", margin=1.5), "margin"),
    (dict(margin=2), "margin"), (dict(region="box"), "region"),
])
def test_bad_arguments_name_themselves(dec, kwargs, arg):
    lat, img, mask = make(12, 10)
    with pytest.raises(ValueError, match=rf"^{arg}: (expected|only with)"):
        dec(lat, img, mask, **kwargs)


def test_region_without_mask_is_refused(dec):
    with pytest.raises(ValueError, match=r"^region: "):
        dec(torch.randn(1, 4, 12, 10), region="mask")


# -- pipeline and CLI -----------------------------------------------------------------------------
def test_pipeline_decode_options_torch_only(dec):
    from asymvq.pipeline.decode_modes import run_decoder_with_modes
    from asymvq.engines.torch_engine import torch_decoder_engines
    from asymvq.pipeline.stages import NULL_TIMER

    lat, img, mask = make(20, 12)
    engines = torch_decoder_engines(dec)
    out = run_decoder_with_modes(engines, NULL_TIMER, lat, img, mask, {"region": "mask", "margin": 1})
    with torch.inference_mode():
        assert torch.equal(out, dec(lat, img, mask, region="mask", margin=1))

    class Other:
        component, backend, output_names = "decoder", "onnxruntime", ("sample",)

        def __call__(self, **feeds):
            raise AssertionError("not called")

    with pytest.raises(ValueError, match=r"torch backend only; .*'onnxruntime'"):
        run_decoder_with_modes({"decoder": Other()}, NULL_TIMER, lat, img, mask, {"tile": 20})


def test_pipeline_call_with_region(dec):
    from asymvq import InpaintPipeline

    pipe = InpaintPipeline.from_preset("tiny")
    img = torch.rand(1, 3, 96, 80)
    mask = torch.zeros(1, 1, 96, 80)
    mask[..., 30:50, 20:40] = 1
    d = pipe.denoise("a", img, mask, num_inference_steps=1, generator=torch.Generator().manual_seed(0))
    out = pipe.decode(d, decode_options={"region": "mask", "margin": 1})
    y0, y1, x0, x1 = mask_box(d.mask, 1, 12, 10)
    keep = torch.ones_like(out, dtype=torch.bool)
    keep[..., 8 * y0:8 * y1, 8 * x0:8 * x1] = False
    assert torch.equal(out[keep], d.image.expand_as(out)[keep])
    with pytest.raises(ValueError, match=r"^decode_options: unknown keys \['tiles'\]"):
        pipe.decode(d, decode_options={"tiles": 20})


def test_cli_decode_tile_and_bad_flag(tmp_path):
    import numpy as np
    from PIL import Image
    from safetensors.torch import save_file
    from typer.testing import CliRunner

    from asymvq.cli import app

    save_file({"latents": torch.randn(1, 4, 12, 10)}, str(tmp_path / "z.safetensors"))
    Image.fromarray((np.random.default_rng(0).random((96, 80, 3)) * 255).astype("uint8")).save(tmp_path / "i.png")
    m = np.zeros((96, 80), "uint8")
    m[30:50, 20:40] = 255
    Image.fromarray(m).save(tmp_path / "m.png")
    base = ["decode", "--preset", "tiny", "--latents", str(tmp_path / "z.safetensors"), "--image", str(tmp_path / "i.png"),
            "--mask", str(tmp_path / "m.png"), "--out", str(tmp_path / "o.png")]
    runner = CliRunner()
    ok = runner.invoke(app, base + ["--tile", "19", "--decode-region", "mask"])
    assert ok.exit_code == 0, ok.output
    assert (tmp_path / "o.png").exists()
    bad = runner.invoke(app, base + ["--tile", "4"])
    assert bad.exit_code != 0
    assert "--tile: expected an integer >= 19" in str(bad.exception)  # tiny preset: halo 9
