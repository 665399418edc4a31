"""Tiled and region decoding (asymvq.models.tiled_decode), tiny topologies, small sizes.

Tiled: equal to the full decode to float rounding (float64 at 1e-9 for each preset family's
topology, several tiles, tiles not dividing the image; bf16 within its rounding, also as ``--dtype bf16``
prepares a decoder on the CPU, channels-last with an fp32 output conv; fp32 >= 50 dB),
with and without mask, non-square, batch 2 over one image, the mask's edges crossing tile cuts;
the image-wide GroupNorm statistics are what get it there (per-tile normalisation, diffusers'
way, is measured far below). Every conv runs once per tile (hooks count them: the recompute of
one pass per norm cannot come back unnoticed). The working memory grows only by the per-image
tensors when the image grows with the same tile, the full decode's with the image; the state
between segments is measured apart. A variant with an extra layer tiles exactly with no tiling
code; an op of unknown reach is refused, and so is a parameter that varies over the image (one per channel
tiles exactly); the op override is per call and per thread.
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


def make(h, w, batch=1, seed=0, channels=4):
    g = torch.Generator().manual_seed(seed)
    lat = torch.randn(batch, channels, h, w, generator=g)
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
    # non-square, 2 tiles of 19 (the smallest) along one axis or the other, the cut through the hole
    lat, img, mask = make(20, 13) if cond else make(13, 20)
    args = (img, mask) if cond else ()
    with torch.inference_mode():
        full = dec(lat, *args)
        tiled = dec(lat, *args, tile=19)
    assert tiled.shape == full.shape
    assert psnr(tiled, full) >= 50.0
    assert float((tiled - full).abs().max()) < 1e-3


# One topology per preset family at 4 channels: vanilla/base (L=2, no condition / conv), tiny (L=1),
# the partial-conv branch, x1.5 (L=3) and x2 (L=5), and ASUKA's gated branch at 16 channels; sizes not
# divisible by the tile's step.
FAMILIES = {
    "vanilla": (DecoderConfig((4, 8, 16, 16), 2, norm_num_groups=2, condition=None), (28, 33), [(27, None), (28, 0)]),
    "base": (DecoderConfig((4, 8, 16, 16), 2, norm_num_groups=2), (33, 28), [(27, None), (29, 7)]),
    "tiny-partial": (DecoderConfig((4, 8, 16, 16), 1, norm_num_groups=2, condition="partial"), (21, 38),
                     [(19, None), (20, 3)]),
    "x1.5": (DecoderConfig((4, 8, 16, 16), 3, norm_num_groups=2), (36, 20), [(33, None)]),
    "x2": (DecoderConfig((4, 8, 16, 16), 5, norm_num_groups=2), (51, 12), [(49, 2)]),
    # ASUKA's: 16 channels, no post-quant conv, the mask as a branch channel, area-any level masks
    "asuka-gated": (DecoderConfig((4, 8, 16, 16), 2, norm_num_groups=2, condition="asuka", gate_conv=True,
                                  latent_channels=16, post_quant_conv=False, shift_factor=0.1159), (30, 27),
                    [(27, None), (28, 5)]),
}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_tiled_equals_full_for_every_family(family):
    """float64: tiled and full differ by float rounding only (any missing context or statistic is O(1))."""
    config, (h, w), tilings = FAMILIES[family]
    torch.manual_seed(1)
    d = AsymmetricDecoder(config).eval().double()
    lat, img, mask = make(h, w, channels=config.latent_channels)
    args = (img.double(), mask) if config.has_condition else ()
    with torch.inference_mode():
        full = d(lat.double(), *args)
        for tile, overlap in tilings:
            tiled = d(lat.double(), *args, tile=tile, overlap=overlap)
            n = len(spans(h, tile, overlap or 4)) * len(spans(w, tile, overlap or 4))
            assert n >= 2, (family, tile)
            torch.testing.assert_close(tiled, full, rtol=1e-9, atol=1e-9 * float(full.abs().max()),
                                       msg=lambda m, tile=tile, overlap=overlap: f"{family} tile={tile} overlap={overlap}: {m}")


def test_tiled_bf16_within_its_rounding(dec):
    """bfloat16: within the dtype's rounding of the full decode (same kernels, other summation order)."""
    d = AsymmetricDecoder(MICRO).eval()
    d.load_state_dict(dec.state_dict())
    d = d.to(torch.bfloat16)
    lat, img, mask = make(20, 13)
    with torch.inference_mode():
        full, tiled = d(lat, img, mask).float(), d(lat, img, mask, tile=19).float()
    err = float((tiled - full).abs().max())
    assert err <= 0.05 * float(full.abs().max()), err


@pytest.mark.parametrize("preset", ["tiny", "tiny-asuka", "tiny-flux"])
def test_tiled_cpu_bf16_within_its_rounding(preset):
    """What ``--dtype bf16`` gives on the CPU (``cpu_bf16``: bf16 channels-last weights, an fp32 ``conv_out``
    whose forward casts its input): tiled equals the bf16 full decode within bf16's rounding, i.e. >= 44 dB
    against it (measured 50-56 dB) and as close to the fp32 decode as the full bf16 decode is (within
    0.5 dB; both 47-50 dB), every conv of the up path fed channels-last (no reorder per window)."""
    from asymvq.models.cpu_bf16 import Fp32OutConv
    from asymvq.models.sources import random_decoder

    d, ref_dec = random_decoder(preset, dtype="bf16"), random_decoder(preset)
    assert type(d.conv_out) is Fp32OutConv
    lat, img, mask = make(20, 13, channels=d.config.latent_channels)
    args = (img, mask) if d.config.has_condition else ()
    layouts = []
    def record(m, i):
        if isinstance(i[0], torch.Tensor):  # not the tracer's proxies (conv_out is traced through)
            layouts.append(i[0].stride(1) == 1)

    hooks = [m.register_forward_pre_hook(record)
             for n, m in d.named_modules() if isinstance(m, torch.nn.Conv2d) and n.startswith(("up_blocks.", "conv_out"))]
    with torch.inference_mode():
        ref, full = ref_dec(lat, *args), d(lat, *args)
        layouts.clear()
        try:
            tiled = d(lat, *args, tile=19)
        finally:
            for hk in hooks:
                hk.remove()
    assert tiled.dtype == full.dtype == torch.float32 and tiled.shape == full.shape
    assert psnr(tiled, full) >= 44.0, psnr(tiled, full)
    assert psnr(tiled, ref) >= psnr(full, ref) - 0.5, (psnr(tiled, ref), psnr(full, ref))
    assert float((tiled - full).abs().max()) <= 0.05 * float(full.abs().max())
    assert layouts and all(layouts), f"{layouts.count(False)} of {len(layouts)} conv inputs not channels-last"


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
    """Peak bytes of tensor storages created inside the mode (allocator-independent), less what
    ``state`` (a ``TileState``: host memory on a GPU run, the same memory here) holds at that moment."""

    def __init__(self, state=None):
        super().__init__()
        self.state = state
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
                    weakref.finalize(st, self._free, key)
        self.peak = max(self.peak, self.now - (self.state.bytes if self.state is not None else 0))
        return out


def peak_bytes(fn, state=None) -> int:
    with torch.inference_mode(), TensorPeak(state) as p:
        fn()
    return p.peak


def test_tiled_memory_is_bounded_by_the_tile(dec):
    """Same tile, 2.6x the pixels: the tiled decode's working memory (all but the state between segments,
    which a GPU run keeps in host memory) rises by the per-image tensors only, the full decode's with the
    image; the state is the boundary values of the whole image, below the full decode's peak.
    (Measured at 152x240 -> 152x624, docs/decoder.md.)"""
    from asymvq.models.tiled_decode import TileState, tiled_decode

    small, big = make(19, 30), make(19, 78)  # 2 and 5 tiles of 19 along the width
    states = [TileState("cpu"), TileState("cpu")]
    with torch.inference_mode():
        tiled = [peak_bytes(lambda a=a, st=st: tiled_decode(dec, *a, 19, 4, state=st), st)
                 for a, st in zip((small, big), states)]
    full = [peak_bytes(lambda a=a: dec(*a)) for a in (small, big)]
    added_px = 152 * 8 * (78 - 30)
    # per-image tensors of the tiled decode, floats per image pixel: the output (3), the image and mask (4),
    # the mid block's latent-level tensors (32 channels at 1/64 of the pixels, a few alive: ~2)
    assert tiled[1] - tiled[0] <= 4 * 10 * added_px, (tiled, full)
    assert full[1] - full[0] > 4 * 50 * added_px, (tiled, full)  # the full decode: ~100 floats a pixel
    assert tiled[1] < 0.4 * full[1], (tiled, full)
    host = [st.peak_bytes for st in states]
    assert 0 < host[1] < full[1] and states[1].bytes == 0, (host, full)


def test_every_layer_runs_once_per_tile(dec):
    """The recompute cannot come back unnoticed: each conv of the up path runs once per tile, the head's once."""
    from asymvq.models.tiled_decode import spans

    lat, img, mask = make(40, 30)
    counts: dict[str, int] = {}
    hooks = [m.register_forward_hook(lambda m, i, o, n=n: counts.__setitem__(n, counts.get(n, 0) + 1))
             for n, m in dec.named_modules() if isinstance(m, torch.nn.Conv2d)]
    try:
        with torch.inference_mode():
            dec(lat, img, mask, tile=19)
    finally:
        for hk in hooks:
            hk.remove()
    tiles = len(spans(40, 19, 4)) * len(spans(30, 19, 4))
    assert tiles == 6
    head = {"post_quant_conv", "conv_in"} | {n for n in counts if n.startswith("mid_block.")}
    assert {n for n, c in counts.items() if c == 1} == head
    assert {c for n, c in counts.items() if n not in head} == {tiles}
    assert len(counts) == sum(isinstance(m, torch.nn.Conv2d) for m in dec.modules())


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
    from asymvq.engines.torch_engine import torch_decoder_engines
    from asymvq.pipeline.decode_modes import run_decoder_with_modes
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


# -- one forward: the tiled decode traces the decoder's own up path --------------------------------
def test_a_new_variant_tiles_for_free(dec):
    """A decoder whose up path gains a layer (a 5x5 conv, reach 2 latent pixels) tiles exactly with no tiling code."""
    class Variant(AsymmetricDecoder):
        def __init__(self, config):
            super().__init__(config)
            c = config.block_out_channels[-1]
            self.pre = torch.nn.Conv2d(c, c, 5, padding=2)

        def decode_up(self, h, image, mask):
            return super().decode_up(h + self.pre(h), image, mask)

    torch.manual_seed(2)
    v = Variant(MICRO).eval().double()
    lat, img, mask = make(20, 21)
    with torch.inference_mode():
        full = v(lat.double(), img.double(), mask)
        tiled = v(lat.double(), img.double(), mask, tile=19, overlap=0)
    torch.testing.assert_close(tiled, full, rtol=1e-9, atol=1e-9 * float(full.abs().max()))


def test_an_unknown_layer_is_refused_not_tiled_wrongly(dec):
    import torch.nn.functional as F

    class Pooled(AsymmetricDecoder):
        def decode_up(self, h, image, mask):
            return super().decode_up(F.avg_pool2d(h, 3, 1, 1), image, mask)

    p = Pooled(MICRO).eval()
    lat, img, mask = make(20, 12)
    with torch.inference_mode(), pytest.raises(NotImplementedError, match=r"^tiled decoding: .*avg_pool2d"):
        p(lat, img, mask, tile=19)


def test_parameters_meeting_the_activations(dec):
    """A parameter read in the up path is a constant, not a spatial op: one per channel (a scale) tiles exactly,
    one that varies over the image (a positional bias of the latent's width) is refused, not tiled wrongly."""
    class Scaled(AsymmetricDecoder):
        def __init__(self, config, shape):
            super().__init__(config)
            self.gain = torch.nn.Parameter(torch.rand(shape) + 0.5)

        def decode_up(self, h, image, mask):
            return super().decode_up(h * self.gain.to(h.dtype), image, mask)

    c = MICRO.block_out_channels[-1]
    torch.manual_seed(3)
    per_channel = Scaled(MICRO, (1, c, 1, 1)).eval().double()
    lat, img, mask = make(20, 21)
    with torch.inference_mode():
        full = per_channel(lat.double(), img.double(), mask)
        tiled = per_channel(lat.double(), img.double(), mask, tile=19)
    torch.testing.assert_close(tiled, full, rtol=1e-9, atol=1e-9 * float(full.abs().max()))
    positional = Scaled(MICRO, (1, c, 1, 21)).eval()
    with torch.inference_mode(), pytest.raises(NotImplementedError, match=r"^tiled decoding: mul of an activation and a "
                                                                          r"constant that varies over the image"):
        positional(lat, img, mask, tile=19)


def test_ops_override_is_scoped_to_the_call_and_the_thread(dec):
    import threading

    from asymvq.models.ops import TORCH_OPS, TorchOps, ops_override

    class Other(TorchOps):
        name = "other"

    other, seen = Other(), {}
    block = dec.up_blocks[0].resnets[0]
    with ops_override(other):
        seen["here"] = (dec.ops, block.ops)
        t = threading.Thread(target=lambda: seen.__setitem__("thread", (dec.ops, block.ops)))
        t.start()
        t.join()
    assert seen["here"] == (other, other) and seen["thread"] == (TORCH_OPS, TORCH_OPS)
    assert dec.ops is TORCH_OPS and dec.kernels == "torch"
    lat, img, mask = make(20, 12)
    with torch.inference_mode():
        dec(lat, img, mask, tile=19)
    assert all(m._ops is TORCH_OPS for m in dec.modules() if hasattr(m, "_ops"))


def test_state_within_a_device_budget_stays_on_the_device(dec):
    """device_bytes: values are kept on the decode's device while they fit, the rest on ``device``; same result.
    (Here both are CPU tensors; the state's own device is meta, so anything it holds there would not decode.)"""
    from asymvq.models.tiled_decode import TileState, tiled_decode

    lat, img, mask = make(20, 13)
    with torch.inference_mode():
        ref = tiled_decode(dec, lat, img, mask, 19, 4)
        everything = TileState("meta", device_bytes=1 << 40)
        torch.testing.assert_close(tiled_decode(dec, lat, img, mask, 19, 4, state=everything), ref, rtol=0, atol=0)
    assert everything.peak_bytes == 0 and everything.moved_bytes == 0 and everything.device_peak_bytes > 0
    assert everything.on_device == 0  # all freed
    host = TileState("cpu")
    with torch.inference_mode():
        tiled_decode(dec, lat, img, mask, 19, 4, state=host)
    assert host.device_peak_bytes == 0 and host.peak_bytes == everything.device_peak_bytes and host.moved_bytes > 0
