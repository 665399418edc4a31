"""SDXL and FLUX.1 Fill through the front ends: `asymvq inpaint --model DIR` / `--preset`, their one-line errors,
the cancellation hook of their loops, and SDXL's fp16 decoder overflow. (`asymvq serve` for them:
test_family_serve.py; Ray Serve's stages: test_ray_serve.py.)"""
from __future__ import annotations

import numpy as np
import PIL.Image
import pytest
import torch

from asymvq.cli import main
from asymvq.models.family_networks import flux_fill_pipeline, sdxl_inpaint_pipeline
from asymvq.pipeline import SDXLInpaintPipeline
from asymvq.pipeline.cancel import JobCancelled
from asymvq.pipeline.inpaint_run import denoise_job, run_inpaint
from asymvq.pipeline.source import PipelineSource

W, H = 48, 32  # non-square, multiples of 16 (FLUX)


def run(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in argv])
    out = capsys.readouterr()
    return exc.value.code or 0, out.out, out.err


def source_and_hole(w=W, h=H, seed=0):
    rng = np.random.default_rng(seed)
    hole = np.zeros((h, w), np.uint8)
    hole[h // 4: 3 * h // 4, w // 4: 3 * w // 4] = 255
    return PIL.Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)), PIL.Image.fromarray(hole)


@pytest.fixture(scope="module")
def pipes(family_pipes):
    """The tiny presets (conftest): what `--preset` / `--model` of the same weights must reproduce."""
    return family_pipes


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """The tiny presets' diffusers pipelines saved as model folders, an image and masks."""
    root = tmp_path_factory.mktemp("families")
    sdxl_inpaint_pipeline().save_pretrained(root / "tiny-sdxl")
    flux_fill_pipeline().save_pretrained(root / "tiny-flux-fill")
    source, hole = source_and_hole()
    source.save(root / "image.png")
    hole.save(root / "mask.png")
    odd, odd_hole = source_and_hole(40, 40)
    odd.save(root / "image40.png")
    odd_hole.save(root / "mask40.png")
    return root


def pixels(path) -> np.ndarray:
    return np.asarray(PIL.Image.open(path).convert("RGB"), np.int16)


# -- asymvq inpaint ---------------------------------------------------------------------------------
@pytest.mark.parametrize("preset", ["tiny-sdxl", "tiny-flux-fill"])
def test_inpaint_model_dir_picks_the_family_from_the_folder(preset, files, pipes, tmp_path, capsys):
    """`--model DIR` of a saved SDXL / FLUX.1 Fill pipeline: the family's pipeline (a wrong one fails to load or
    gives another image), the same image as the preset it was saved from, with the SD path's option names."""
    out = tmp_path / "out.png"
    code, stdout, err = run(["inpaint", "--model", files / preset, "--image", files / "image.png", "--mask",
                             files / "mask.png", "--prompt", "a red sofa", "--out", out, "--steps", "2", "--seed", "3"],
                            capsys)
    assert code == 0, err
    assert "Pre_error" in stdout
    expected = run_inpaint(pipes[preset], *source_and_hole(), "a red sofa", steps=2, seed=3)
    assert np.abs(pixels(out) - np.asarray(expected.images[0], np.int16)).max() <= 1


def test_inpaint_preset_flux_fill_with_asuka_decoder(files, tmp_path, capsys):
    """`--decoder` chooses FLUX's decoder: the plain one by default, ASUKA's conditional one when named."""
    outs = {}
    for name, extra in (("plain", []), ("asuka", ["--decoder", "tiny-asuka"])):
        outs[name] = tmp_path / f"{name}.png"
        code, _, err = run(["inpaint", "--preset", "tiny-flux-fill", "--image", files / "image.png", "--mask",
                            files / "mask.png", "--prompt", "a red sofa", "--out", outs[name], "--steps", "2", *extra],
                           capsys)
        assert code == 0, err
    asuka = PipelineSource(preset="tiny-flux-fill", decoder="tiny-asuka").build()
    assert sorted(asuka.stages.decoders()) == ["decoder", "decoder-plain"]  # the conditional one decodes
    expected = run_inpaint(asuka, *source_and_hole(), "a red sofa", steps=2, seed=0)
    assert np.abs(pixels(outs["asuka"]) - np.asarray(expected.images[0], np.int16)).max() <= 1
    assert np.abs(pixels(outs["asuka"]) - pixels(outs["plain"])).max() > 1


@pytest.mark.parametrize("preset, extra, needle", [
    ("tiny-flux-fill", ["--image", "{root}/image40.png", "--mask", "{root}/mask40.png"],
     "--image: expected width and height multiples of 16 for FLUX.1 Fill, got 40x40 (WxH)"),
    ("tiny-flux-fill", ["--guidance", "120"], "--guidance: expected a value in [0, 100] for FLUX.1 Fill, got 120.0"),
    ("tiny-sdxl", ["--guidance", "60"], "--guidance: expected a value in [0, 50] for SDXL, got 60.0"),
    ("tiny-flux-fill", ["--negative-prompt", "blurry"], "--negative-prompt: FLUX.1 Fill has no classifier-free guidance"),
    ("tiny-flux-fill", ["--scheduler", "euler"], "--scheduler: FLUX.1 Fill runs its own flow-matching scheduler only"),
    ("tiny-sdxl", ["--scheduler", "lms"], "--scheduler: expected one of ['ddim', 'pndm', 'euler', 'dpm++'], got 'lms'"),
    ("tiny-sdxl", ["--prompt", "word " * 80], "--prompt: a prompt is"),  # past CLIP's 77 tokens: refused, not cut
    ("tiny-flux-fill", ["--decoder", "nowhere.pt"], "--decoder: expected a decoder checkpoint or a decoder preset"),
])
def test_inpaint_bad_input_is_a_one_line_error_naming_the_option(preset, extra, needle, files, tmp_path, capsys):
    extra = [str(a).replace("{root}", str(files)) for a in extra]
    base = {"--image": files / "image.png", "--mask": files / "mask.png", "--prompt": "a sofa"}
    args = [a for k, v in base.items() if k not in extra for a in (k, v)]
    code, _, err = run(["inpaint", "--preset", preset, *args, "--out", tmp_path / "o.png", "--steps", "1", *extra], capsys)
    assert code == 1 and err.count("\n") == 1 and err.startswith("asymvq: error: ") and needle in err, err


# -- the cancellation hook ----------------------------------------------------------------------------
@pytest.mark.parametrize("preset", ["tiny-sdxl", "tiny-flux-fill"])
def test_cancel_hook_stops_the_family_loops_at_a_step_boundary(preset, pipes):
    """As SD's (tests/runtime/test_server_cancel.py): the hook changes nothing in a run it lets finish."""
    pipe = pipes[preset]
    source, hole = source_and_hole()

    def latents(cancel=None):
        return denoise_job(pipe, "a sofa", source, hole, steps=4, generator=torch.Generator().manual_seed(1),
                           cancel=cancel).latents

    assert torch.equal(latents(), latents(lambda: False))
    asked = []

    def after_two():
        asked.append(1)
        return len(asked) > 2

    with pytest.raises(JobCancelled, match="before denoising step 3 of 4"):
        latents(after_two)


# -- SDXL's fp16 decoder overflow ---------------------------------------------------------------------
def overflowing_sdxl(force_upcast: bool):
    """tiny-sdxl in fp16 whose VAE decoder's first conv is pushed to fp16's edge (bias 6e4, weights x30; each
    representable in fp16): its activations pass fp16's 65504 (non-finite in fp16, finite in fp32, where the
    next GroupNorm brings them back)."""
    pipe = sdxl_inpaint_pipeline()
    with torch.no_grad():
        pipe.vae.decoder.conv_in.weight.mul_(30.0)
        pipe.vae.decoder.conv_in.bias.add_(6e4)
    pipe.vae.register_to_config(force_upcast=force_upcast)
    return SDXLInpaintPipeline.from_diffusers(pipe.to(torch.float16))


@pytest.mark.parametrize("force_upcast", [True, False])
def test_sdxl_fp16_decoder_runs_in_fp32_where_fp16_overflows(force_upcast, caplog):
    """With force_upcast (SDXL's VAE config) the decoder runs in fp32 from the start, as diffusers does; without it
    (an fp16-"fixed" VAE) it runs in fp16, and a decode that gives non-finite values is redone in fp32, as is every
    later one. The same latents decoded in fp16 are non-finite, so the condition is real."""
    ours = overflowing_sdxl(force_upcast)
    assert ours.decode_dtype == (torch.float32 if force_upcast else None)
    source, hole = source_and_hole(32, 32)
    den = denoise_job(ours, "a sofa", source, hole, steps=1, generator=torch.Generator().manual_seed(0))
    assert den.latents.dtype == torch.float16
    fp16 = ours.decoder_module if not force_upcast else None
    if fp16 is not None:
        with torch.inference_mode():
            raw = fp16(ours.latent_space.to_vae(den.latents))
        assert not bool(torch.isfinite(raw).all())  # fp16 overflows on these latents
    with caplog.at_level("WARNING", logger="asymvq.pipeline"):
        image = ours.decode(den)
    assert bool(torch.isfinite(image).all()) and image.dtype == torch.float32
    assert ours.decode_dtype == torch.float32
    assert {p.dtype for p in ours.decoder_module.parameters()} == {torch.float32}
    assert ("float16 gave non-finite values; decoding in float32" in caplog.text) == (not force_upcast)
    # what fp32 gives from the start: the redone decode is that, not a patched fp16 one
    ref = overflowing_sdxl(True)
    torch.testing.assert_close(image, ref.decode(den), rtol=0, atol=1e-5)


def test_a_decode_stage_keeps_only_the_decoder(pipes):
    """What a Ray Serve decode stage builds from an SDXL / FLUX.1 Fill source: the decoder, not the denoising
    networks; it decodes what the whole pipeline denoised, to the whole pipeline's image, and refuses to denoise."""
    from asymvq.engines.contract import DECODER_COMPONENTS

    decode_only = PipelineSource(preset="tiny-flux-fill").build(components=DECODER_COMPONENTS)
    assert set(decode_only.stages.engines) == {"decoder-plain"}  # no transformer, text encoders, VAE encoder
    source, hole = source_and_hole()
    den = denoise_job(pipes["tiny-flux-fill"], "a sofa", source, hole, steps=1, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(decode_only.decode(den), pipes["tiny-flux-fill"].decode(den), rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="denoise: this FLUX.1 Fill pipeline keeps only its decoder"):
        denoise_job(decode_only, "a sofa", source, hole, steps=1)
