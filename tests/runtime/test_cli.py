"""The asymvq command line, run in-process through ``main``: outputs, and one-line errors."""
from __future__ import annotations

import json

import numpy as np
import PIL.Image
import pytest
import torch
from runtime_helpers import diffusers_pipeline, image_and_mask

from asymvq import preservation_error, save_decoder
from asymvq.cli import main, parse_size
from asymvq.pipeline.images import postprocess, prepare_image_and_mask


def run(argv, capsys):
    """(exit code, stdout, stderr) of ``asymvq ARGV``."""
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in argv])
    out = capsys.readouterr()
    return exc.value.code or 0, out.out, out.err


def assert_one_line_error(code, err, needle):
    assert code == 1
    assert err.count("\n") == 1 and err.startswith("asymvq: error: ") and needle in err, err
    assert "Traceback" not in err


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A tiny SD inpainting folder, a saved decoder, a source image, a mask and latents in three formats."""
    root = tmp_path_factory.mktemp("cli")
    ref = diffusers_pipeline("inpaint")
    ref.save_pretrained(root / "sd")
    from asymvq.models.checkpoints import decoder_from_vae

    decoder = decoder_from_vae(ref.vae)
    save_decoder(decoder, root / "decoder")
    image, mask = image_and_mask(seed=5)
    PIL.Image.fromarray((image * 255).round().astype(np.uint8)).save(root / "image.png")
    PIL.Image.fromarray((mask * 255).astype(np.uint8)).save(root / "mask.png")
    PIL.Image.fromarray(np.zeros((48, 64), np.uint8)).save(root / "small_mask.png")
    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    from asymvq.pipeline.latents_io import save_latents

    for suffix in (".pt", ".npy", ".safetensors"):
        save_latents(latents, root / f"latents{suffix}")
    return dict(root=root, ref=ref, decoder=decoder, latents=latents)


def test_help_lists_the_commands(capsys):
    code, out, _ = run(["--help"], capsys)
    assert code == 0 and all(c in out for c in ("profile", "inpaint", "decode"))


def test_profile_writes_table_json_and_png(tmp_path, capsys):
    code, out, _ = run(["profile", "--preset", "tiny", "--decoders", "tiny", "--steps", "2", "--size", "32x48",
                        "--warmup", "0", "--repeats", "1", "--json", tmp_path / "r.json", "--plot", tmp_path / "r.png"],
                       capsys)
    assert code == 0 and "| Module" in out and "Throughput (tiny)" in out
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["config"]["height"] == 32 and report["config"]["width"] == 48 and report["stages"]["unet_step"]["count"] == 2
    assert (tmp_path / "r.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--decoders", "x3"], "--decoders: unknown decoder presets ['x3']"),
        (["--size", "500x512"], "--size: expected HxW with positive multiples of 8"),
        (["--preset", "sd21"], "--preset: expected one of ['tiny', 'sd15', 'tiny-flux-fill', 'flux-fill', 'tiny-sdxl', 'sdxl']"),
        (["--preset", "tiny-flux-fill", "--size", "40x48"], "--size: expected multiples of 16 for FLUX.1 Fill"),
        (["--dtype", "fp8"], "--dtype: expected one of"),
        (["--scheduler", "lms"], "--scheduler: expected one of"),
        (["--steps", "0"], "steps: expected an integer >= 1"),
    ],
)
def test_profile_rejects_bad_options_in_one_line(args, needle, capsys):
    code, _, err = run(["profile", *args], capsys)
    assert_one_line_error(code, err, needle)


def test_debug_shows_the_traceback():
    with pytest.raises(ValueError, match="--decoders: unknown"):
        main(["profile", "--decoders", "x3", "--debug"])


def test_decode_every_latents_format_matches_the_decoder(files, tmp_path, capsys):
    root, decoder, latents = files["root"], files["decoder"], files["latents"]
    pixels = torch.from_numpy(np.asarray(PIL.Image.open(root / "image.png"), np.float32) / 127.5 - 1).permute(2, 0, 1)[None]
    hole = torch.from_numpy(np.asarray(PIL.Image.open(root / "mask.png")) > 127).float()[None, None]
    with torch.inference_mode():
        want = decoder(latents / decoder.config.scaling_factor, pixels, hole)
    want = ((want / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8)[0].permute(1, 2, 0).numpy()
    for suffix in (".pt", ".npy", ".safetensors"):
        out = tmp_path / f"out{suffix}.png"
        code, _, err = run(["decode", "--decoder", root / "decoder", "--latents", root / f"latents{suffix}",
                            "--image", root / "image.png", "--mask", root / "mask.png", "--out", out, "--dtype", "fp32"], capsys)
        assert code == 0, err
        got = np.asarray(PIL.Image.open(out))
        assert got.shape == (64, 64, 3) and np.abs(got.astype(int) - want.astype(int)).max() <= 1
    code, _, _ = run(["decode", "--decoder", root / "decoder", "--latents", root / "latents.npy", "--out", tmp_path / "plain.png",
                      "--dtype", "fp32"], capsys)
    assert code == 0 and np.abs(np.asarray(PIL.Image.open(tmp_path / "plain.png")).astype(int) - want).max() > 2


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["--latents", "{root}/missing.pt"], "latents file not found"),
        (["--latents", "{root}/image.png"], "expected a .pt, .pth, .npy, .safetensors file"),
        (["--latents", "{root}/latents.pt", "--image", "{root}/image.png", "--mask", "{root}/small_mask.png"],
         "--mask: expected 64x64 (HxW, 8x the latents' 8x8), got 48x64"),
        (["--latents", "{root}/latents.pt", "--image", "{root}/image.png"], "--image / --mask: give both"),
        (["--latents", "{root}/latents.pt", "--decoder", "{root}/nowhere"], "decoder path does not exist"),
    ],
)
def test_decode_errors_are_one_line(files, extra, needle, capsys, tmp_path):
    root = files["root"]
    args = ["decode", "--decoder", root / "decoder", "--out", tmp_path / "o.png"]
    extra = [e.format(root=root) for e in extra]
    if "--decoder" in extra:
        args = args[:1] + args[3:]
    code, _, err = run(args + extra, capsys)
    assert_one_line_error(code, err, needle)


def test_inpaint_from_a_folder_matches_the_library(files, tmp_path, capsys):
    root = files["root"]
    out = tmp_path / "inpainted.png"
    code, stdout, err = run(["inpaint", "--model", root / "sd", "--image", root / "image.png", "--mask", root / "mask.png",
                             "--prompt", "a red cat", "--out", out, "--steps", "2", "--seed", "3", "--scheduler", "pndm",
                             "--dtype", "fp32"],  # the library's default: the CLI's (auto) is the CPU's
                            capsys)
    assert code == 0, err
    from asymvq.pipeline import InpaintPipeline

    # (pndm: its defaults agree with the saved DDIM config; diffusers' from_config lets a new scheduler
    # class keep its own defaults only for keys an in-memory config never set, e.g. Euler's spacing)
    pipe = InpaintPipeline.from_diffusers(files["ref"], scheduler="pndm")
    source, hole = PIL.Image.open(root / "image.png"), PIL.Image.open(root / "mask.png")
    sample = pipe.decode(pipe.denoise("a red cat", source, hole, num_inference_steps=2,
                                      generator=torch.Generator().manual_seed(3)))
    want_png = postprocess(sample, "pil")[0]
    np.testing.assert_array_equal(np.asarray(PIL.Image.open(out)), np.asarray(want_png))
    pixels, mask, _, _ = prepare_image_and_mask(source, hole, None, None)
    pre_error = float(preservation_error(sample.clamp(-1, 1), pixels, mask).mean())
    assert f"Pre_error (MSE on kept pixels, 0-255 units): {pre_error:.2f}" in stdout


@pytest.mark.parametrize(
    "model, mask, needle",
    [
        ("sd", "small_mask.png", "--mask: expected the image's size 64x64 (WxH), got 64x48"),
        ("nowhere", "mask.png", "SD model folder not found"),
        ("sd", "missing.png", "image file not found"),
    ],
)
def test_inpaint_errors_are_one_line(files, model, mask, needle, capsys, tmp_path):
    root = files["root"]
    code, _, err = run(["inpaint", "--model", root / model, "--image", root / "image.png", "--mask", root / mask,
                        "--prompt", "x", "--out", tmp_path / "o.png", "--steps", "1"], capsys)
    assert_one_line_error(code, err, needle)


def test_parse_size():
    assert parse_size("512x768") == (512, 768) and parse_size("256") == (256, 256)
    for bad in ("512x", "axb", "0x8", "8x8x8"):
        with pytest.raises(ValueError, match="^--size"):
            parse_size(bad)


def test_inpaint_with_a_separate_decoder_checkpoint(files, tmp_path, capsys):
    """--decoder replaces the folder's VAE decoder; the same weights give the same image, others another."""
    root = files["root"]
    common = ["inpaint", "--model", root / "sd", "--image", root / "image.png", "--mask", root / "mask.png",
              "--prompt", "a cat", "--steps", "1"]
    assert run(common + ["--out", tmp_path / "own.png"], capsys)[0] == 0
    assert run(common + ["--out", tmp_path / "same.png", "--decoder", root / "decoder"], capsys)[0] == 0
    from asymvq.models.sources import random_decoder

    save_decoder(random_decoder("tiny", seed=11), tmp_path / "other")
    assert run(common + ["--out", tmp_path / "other.png", "--decoder", tmp_path / "other"], capsys)[0] == 0
    own, same, other = (np.asarray(PIL.Image.open(tmp_path / f"{n}.png")).astype(int) for n in ("own", "same", "other"))
    np.testing.assert_array_equal(own, same)
    assert np.abs(own - other).max() > 10


def test_a_commands_log_follows_stderr_after_a_redirected_run(monkeypatch, capsys):
    """A command run in-process under a redirected stderr (CliRunner, an embedding host) must not pin that stream."""
    import io
    import logging

    from asymvq.cli.options import log_to_stderr

    name = "asymvq.test.log_follows_stderr"
    logging.getLogger(name).handlers.clear()
    first = io.StringIO()
    monkeypatch.setattr("sys.stderr", first)
    log_to_stderr(name, "%(message)s").info("during")
    first.close()
    monkeypatch.undo()
    log_to_stderr(name, "%(message)s").info("after")
    err = capsys.readouterr().err
    assert err.endswith("after\n") and "Logging error" not in err
