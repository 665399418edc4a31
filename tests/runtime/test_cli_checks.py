"""`asymvq inpaint` / `decode` refuse bad values before any work, by the servers' rules (asymvq.pipeline.job_rules)."""
from __future__ import annotations

import time

import numpy as np
import PIL.Image
import pytest

from asymvq.cli import main
from asymvq.cli.out_path import check_image_out
from asymvq.pipeline.job_rules import PROMPT_MAX_BYTES, check_job


def run(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in argv])
    out = capsys.readouterr()
    return exc.value.code or 0, out.out, out.err


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("checks")
    PIL.Image.fromarray(np.full((32, 32, 3), 100, np.uint8)).save(root / "image.png")
    PIL.Image.fromarray(np.full((32, 32), 255, np.uint8)).save(root / "mask.png")
    return root


@pytest.mark.parametrize("extra, needle", [
    (["--seed", "-1"], "--seed: expected a value in [0, 9223372036854775807], got -1"),
    (["--strength", "1.5"], "--strength: expected a value in (0, 1], got 1.5"),
    (["--strength", "0.1", "--steps", "2"], "--strength: expected a value that leaves at least one of the 2 denoising"),
    (["--steps", "0"], "--steps: expected a value in [1, 1000], got 0"),
    (["--steps", "1001"], "--steps: expected a value in [1, 1000], got 1001"),  # past the schedulers' tables
    (["--guidance", "80"], "--guidance: expected a value in [0, 50], got 80.0"),
    (["--scheduler", "lms"], "--scheduler: expected one of ['ddim', 'pndm', 'euler', 'dpm++'], got 'lms'"),
    (["--prompt", "x" * (PROMPT_MAX_BYTES + 1)], f"--prompt: expected at most {PROMPT_MAX_BYTES} bytes"),
    (["--negative-prompt", "\u00e9" * PROMPT_MAX_BYTES], "--negative-prompt: expected at most"),
    (["--out", "/proc/x.png"], "--out: expected a writable location, got /proc/x.png"),
    (["--out", "{root}"], "--out: expected an image file path (e.g. out.png), got the directory"),
    (["--out", "{root}/o.txt"], "--out: expected an image file name ending in"),
    (["--out", "{root}/image.png/o.png"], "--out: expected a path under a directory, got one under the file"),
    (["--image", "{root}"], "expected an image file, got a directory"),
])
def test_inpaint_refuses_before_building_anything(images, extra, needle, capsys):
    args = {"--preset": "tiny", "--image": images / "image.png", "--mask": images / "mask.png", "--prompt": "x",
            "--out": images / "o.png", "--steps": "2"}
    for flag, value in zip(extra[::2], extra[1::2]):
        args[flag] = value.format(root=images)
    t0 = time.monotonic()
    code, _, err = run(["inpaint", *[x for kv in args.items() for x in kv]], capsys)
    assert code == 1 and err.count("\n") == 1 and needle in err and "Traceback" not in err, err
    assert "allow_pickle" not in err
    assert time.monotonic() - t0 < 5  # refused up front: no pipeline was built (the tiny preset takes longer)
    assert not (images / "o.png").exists()


def test_decode_refuses_out_and_directories_and_pickled_npy(images, tmp_path, capsys):
    base = ["decode", "--preset", "tiny"]
    code, _, err = run(base + ["--latents", tmp_path, "--out", tmp_path / "o.png"], capsys)
    assert code == 1 and f"{tmp_path}: expected a latents file, got a directory" in err, err
    code, _, err = run(base + ["--latents", tmp_path / "l.npy", "--out", tmp_path], capsys)
    assert code == 1 and "--out: expected an image file path" in err, err
    bad = tmp_path / "objects.npy"
    np.save(bad, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    code, _, err = run(base + ["--latents", bad, "--out", tmp_path / "o.png"], capsys)
    assert code == 1 and f"{bad}: expected a numeric .npy array, got an object array" in err, err
    assert "allow_pickle" not in err
    junk = tmp_path / "junk.npy"
    junk.write_bytes(b"\x93NUMPY garbage")
    code, _, err = run(base + ["--latents", junk, "--out", tmp_path / "o.png"], capsys)
    assert code == 1 and str(junk) in err and "allow_pickle" not in err, err


def test_one_rule_for_every_caller():
    # what the form parser and the CLI share: the same normalisation and the same words
    job = check_job(prompt="a", steps=4, guidance=3, seed=5, strength=0.5, scheduler="DPM-Solver++")
    assert job == dict(prompt="a", negative_prompt=None, steps=4, guidance=3.0, seed=5, strength=0.5, scheduler="dpm++")
    with pytest.raises(ValueError, match=r"^steps: expected a value in \[1, 3\], got 4$"):
        check_job(prompt="a", steps=4, max_steps=3)
    with pytest.raises(ValueError, match=r"^-s: expected an integer, got True$"):
        check_job(prompt="a", steps=True, names={"steps": "-s"})
    assert check_image_out("x/y/z.png").name == "z.png"  # directories still to be made are fine
