"""Refusals: each bad input gets the right status and a one-line message naming the argument,
from asymvq-run (exit status = asymvq_status) and from the C API (ctypes), with no crash.

The same cases ran once under AddressSanitizer (a -DASYMVQ_SANITIZE=address build); see
docs/host.md. ``ASYMVQ_HOST_RUNNER`` points these tests at another asymvq-run build.
"""
from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
from pathlib import Path

import asymvq_host as capi
import pytest
import torch
from safetensors.torch import save_file

STATUS = {"INVALID_ARGUMENT": 1, "NOT_FOUND": 2, "MANIFEST": 3, "UNSUPPORTED": 4, "RUNTIME": 5, "FORMAT": 6, "IO": 7}


@pytest.fixture(scope="module")
def run_bin(runner):
    return Path(os.environ.get("ASYMVQ_HOST_RUNNER", runner))


def _save(path: Path, t: torch.Tensor) -> Path:
    save_file({"t": t.contiguous()}, str(path))
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("inputs")
    g = torch.Generator().manual_seed(0)
    z = torch.randn(3, 4, 8, 8, generator=g)
    nan = z.clone()
    nan[0, 0, 1, 1] = float("nan")
    good = _save(d / "z.safetensors", z)
    raw = good.read_bytes()
    (d / "truncated.safetensors").write_bytes(raw[: len(raw) - 100])
    (d / "short.safetensors").write_bytes(raw[:5])
    (d / "garbage_header.safetensors").write_bytes(struct.pack("<Q", 6) + b"{nope}" + b"\0" * 8)
    (d / "huge_header.safetensors").write_bytes(struct.pack("<Q", 1 << 40) + b"{}")
    save_file({"a": z, "b": z.clone()}, str(d / "two.safetensors"))
    return {
        "z": good,
        "nan": _save(d / "nan.safetensors", nan),
        "image": _save(d / "image.safetensors", torch.rand(3, 3, 64, 64, generator=g) * 2 - 1),
        "image72": _save(d / "image72.safetensors", torch.rand(3, 3, 72, 72, generator=g) * 2 - 1),
        "image_range": _save(d / "image_range.safetensors", torch.rand(3, 3, 64, 64, generator=g) * 4),
        "mask": _save(d / "mask.safetensors", (torch.rand(1, 1, 64, 64, generator=g) > 0.5).float()),
        "mask2": _save(d / "mask2.safetensors", (torch.rand(2, 1, 64, 64, generator=g) > 0.5).float()),
        "soft_mask": _save(d / "soft.safetensors", torch.rand(1, 1, 64, 64, generator=g)),
        "embeds": _save(d / "e.safetensors", torch.randn(1, 77, 32, generator=g)),
        "embeds_bad": _save(d / "e_bad.safetensors", torch.randn(1, 77, 16, generator=g)),
        "image1": _save(d / "image1.safetensors", torch.rand(1, 3, 64, 64, generator=g) * 2 - 1),
        "truncated": d / "truncated.safetensors",
        "short": d / "short.safetensors",
        "garbage": d / "garbage_header.safetensors",
        "huge": d / "huge_header.safetensors",
        "two": d / "two.safetensors",
        "missing": d / "does-not-exist.safetensors",
    }


def _expect(run_bin, args, status: str, *fragments: str, tmp_path=None):
    r = subprocess.run([str(run_bin), *map(str, args)], capture_output=True, text=True, timeout=300)
    assert r.returncode == STATUS[status], f"exit {r.returncode}, stderr: {r.stderr}"
    line = r.stderr.strip().splitlines()[0]
    assert line.startswith(f"asymvq-run: ASYMVQ_ERR_{status}: "), r.stderr
    for frag in fragments:
        assert frag in r.stderr, f"{frag!r} not in {r.stderr!r}"
    assert "Traceback" not in r.stderr and "terminate called" not in r.stderr
    return r


def _decode(tiny, files, tmp_path, z="z", image=None, mask=None):
    args = ["decode", "--engines", tiny, "--latents", files[z] if z in files else z, "--out", tmp_path / "o.safetensors"]
    if image:
        args += ["--image", files[image]]
    if mask:
        args += ["--mask", files[mask]]
    return args


def test_wrong_shapes_and_values(run_bin, tiny, files, tmp_path):
    _expect(run_bin, _decode(tiny, files, tmp_path, image="image72", mask="mask"), "INVALID_ARGUMENT",
            "image: expected spatial size 8x the latents' = 64x64, got 72x72")
    _expect(run_bin, _decode(tiny, files, tmp_path, image="image", mask="mask2"), "INVALID_ARGUMENT",
            "mask: expected batch 1 or 3 (the latent batch), got batch 2")
    _expect(run_bin, _decode(tiny, files, tmp_path, z="nan"), "INVALID_ARGUMENT", "latents: expected finite values, got NaN or Inf")
    _expect(run_bin, _decode(tiny, files, tmp_path, image="image_range", mask="mask"), "INVALID_ARGUMENT",
            "image: expected values in [-1, 1]")
    _expect(run_bin, _decode(tiny, files, tmp_path, image="image", mask="soft_mask"), "INVALID_ARGUMENT",
            "mask: expected binary values")
    _expect(run_bin, _decode(tiny, files, tmp_path, image="image"), "INVALID_ARGUMENT",
            "mask: expected a tensor whenever the other of image/mask is given, got NULL")
    _expect(run_bin, _decode(tiny, files, tmp_path, z="embeds"), "INVALID_ARGUMENT", "latents: expected shape (B, 4, h, w)")


def test_inpaint_argument_errors(run_bin, tiny, files, tmp_path):
    base = ["inpaint", "--engines", tiny, "--image", files["image1"], "--mask", files["mask"], "--steps", 1,
            "--out", tmp_path / "o.safetensors"]
    _expect(run_bin, base + ["--prompt-embeds", files["embeds_bad"]], "INVALID_ARGUMENT",
            "prompt_embeds: expected float32 (B, 77, 32)", "got shape (1, 77, 16)")
    _expect(run_bin, base + ["--prompt-embeds", files["embeds"], "--scheduler", "pndm"], "INVALID_ARGUMENT",
            "--scheduler: expected ddim or euler, got 'pndm'")
    _expect(run_bin, base + ["--prompt-embeds", files["embeds"], "--steps", "0"], "INVALID_ARGUMENT", "--steps")
    _expect(run_bin, base, "INVALID_ARGUMENT", "prompt_embeds / prompt_ids: expected exactly one of them, got neither")
    no_image = ["inpaint", "--engines", tiny, "--prompt-embeds", files["embeds"], "--out", tmp_path / "o.safetensors"]
    _expect(run_bin, no_image, "INVALID_ARGUMENT", "this directory's UNet has 9 input channels (inpainting)")
    _expect(run_bin, ["inpaint", "--engines", tiny, "--bogus", "1"], "INVALID_ARGUMENT", "unknown option '--bogus'")


def test_missing_and_malformed_files(run_bin, tiny, files, tmp_path):
    _expect(run_bin, _decode(tiny, files, tmp_path, z="missing"), "NOT_FOUND", "--latents", "no such file")
    _expect(run_bin, _decode(tmp_path / "nowhere", files, tmp_path), "NOT_FOUND",
            "engines_dir: expected a directory written by `asymvq export`")
    empty = tmp_path / "empty"
    empty.mkdir()
    _expect(run_bin, _decode(empty, files, tmp_path), "NOT_FOUND", "manifest.json is missing")
    _expect(run_bin, _decode(tiny, files, tmp_path, z="truncated"), "FORMAT", "--latents", "run past the data", "truncated")
    _expect(run_bin, _decode(tiny, files, tmp_path, z="short"), "FORMAT", "shorter than the 8-byte header size")
    _expect(run_bin, _decode(tiny, files, tmp_path, z="garbage"), "FORMAT", "header is not valid JSON")
    _expect(run_bin, _decode(tiny, files, tmp_path, z="huge"), "FORMAT", "truncated or not safetensors")
    _expect(run_bin, _decode(tiny, files, tmp_path, z="two"), "FORMAT", "holding one tensor, got 2")


@pytest.fixture()
def copy_of(tiny, tmp_path):
    def make(name="engines"):
        d = tmp_path / name
        shutil.copytree(tiny, d)
        return d

    return make


def _edit_manifest(d: Path, fn):
    m = json.loads((d / "manifest.json").read_text())
    fn(m)
    (d / "manifest.json").write_text(json.dumps(m))


def test_corrupted_or_mismatched_directory(run_bin, copy_of, files, tmp_path):
    d = copy_of("corrupt")
    pkg = d / "decoder.pt2"
    data = bytearray(pkg.read_bytes())
    data[len(data) // 2] ^= 0xFF
    pkg.write_bytes(bytes(data))
    _expect(run_bin, _decode(d, files, tmp_path), "MANIFEST", "decoder aoti artifact", "is corrupted or was replaced")

    d = copy_of("truncated-pkg")
    (d / "unet.pt2").write_bytes((d / "unet.pt2").read_bytes()[:1000])
    _expect(run_bin, _decode(d, files, tmp_path), "MANIFEST", "unet aoti artifact", "is corrupted or was replaced")

    d = copy_of("missing-pkg")
    (d / "vae-encoder.pt2").unlink()
    _expect(run_bin, _decode(d, files, tmp_path), "MANIFEST", "vae-encoder aoti artifact", "is missing")

    d = copy_of("swapped-io")
    _edit_manifest(d, lambda m: m["components"]["decoder"]["inputs"][1].update(name="mask_image"))
    _expect(run_bin, _decode(d, files, tmp_path), "MANIFEST", "decoder in", "expected ['latent', 'image', 'mask']")

    d = copy_of("dtype")
    _edit_manifest(d, lambda m: m["components"]["text-encoder"]["inputs"][0].update(dtype="float32"))
    _expect(run_bin, _decode(d, files, tmp_path), "MANIFEST", "input_ids has dtype float32, expected int64")

    d = copy_of("range")
    _edit_manifest(d, lambda m: m["components"]["unet"]["inputs"][0].update(min=[1, 9, 99, 4]))
    _expect(run_bin, _decode(d, files, tmp_path), "MANIFEST", "min <= opt <= max")

    d = copy_of("version")
    _edit_manifest(d, lambda m: m.update(format_version=3))
    _expect(run_bin, _decode(d, files, tmp_path), "MANIFEST", "format_version 3", "this asymvq reads 2")
    d = copy_of("version-1")
    _edit_manifest(d, lambda m: m.update(format_version=1))
    _expect(run_bin, _decode(d, files, tmp_path), "MANIFEST", "format_version 1; this asymvq reads 2", "re-export")

    d = copy_of("unknown")
    _edit_manifest(d, lambda m: m["components"].update(vae=m["components"]["decoder"]))
    _expect(run_bin, _decode(d, files, tmp_path), "MANIFEST", "unknown component 'vae'")

    d = copy_of("device")
    _edit_manifest(d, lambda m: m["components"]["decoder"]["artifacts"]["aoti"].update(device="cuda"))
    _expect(run_bin, _decode(d, files, tmp_path), "MANIFEST", "was compiled for cuda, not cpu")

    d = copy_of("escape")
    _edit_manifest(d, lambda m: m["components"]["decoder"]["artifacts"]["aoti"].update(
        path="../x.pt2", files={"../x.pt2": "0" * 64}))
    _expect(run_bin, _decode(d, files, tmp_path), "MANIFEST", "leaves the directory")

    d = copy_of("no-aoti")
    _edit_manifest(d, lambda m: m["components"]["decoder"]["artifacts"].pop("aoti"))
    _edit_manifest(d, lambda m: m["components"]["decoder"]["artifacts"].update(onnx={"path": "decoder.onnx", "files": {}}))
    _expect(run_bin, _decode(d, files, tmp_path), "MANIFEST", "has no 'aoti' artifact", "--format aoti")

    d = copy_of("bad-json")
    (d / "manifest.json").write_text("{not json")
    _expect(run_bin, _decode(d, files, tmp_path), "MANIFEST", "is not valid JSON")


def test_c_api_refusals(lib, tiny, engines):
    """NULL handles and pointers, a wrong struct size, a missing component: statuses, never a crash."""
    import ctypes as C

    out = capi.Output()
    assert lib.asymvq_decode(None, None, None, None, C.byref(out)) == capi.INVALID_ARGUMENT
    assert lib.asymvq_last_error().decode() == "host: expected a handle from asymvq_open, got NULL"
    h = C.c_void_p()
    assert lib.asymvq_open(None, None, C.byref(h)) == capi.INVALID_ARGUMENT and not h
    assert lib.asymvq_open(str(tiny).encode(), b"tpu", C.byref(h)) == capi.INVALID_ARGUMENT
    assert "device: expected 'cpu', 'cuda' or 'cuda:N'" in lib.asymvq_last_error().decode()
    lib.asymvq_close(None)
    lib.asymvq_output_free(None)

    with capi.Host(lib, tiny) as host:
        assert host.has("decoder") and host.unet_channels() == 9
        assert lib.asymvq_decode(host.handle, None, None, None, C.byref(out)) == capi.INVALID_ARGUMENT
        assert lib.asymvq_last_error().decode() == "latents: expected a tensor, got NULL"
        p = capi.Params()
        lib.asymvq_inpaint_params_init(C.byref(p))
        p.struct_size = 8
        assert lib.asymvq_inpaint(host.handle, C.byref(p), C.byref(out)) == capi.INVALID_ARGUMENT
        assert "params.struct_size" in lib.asymvq_last_error().decode()
        with pytest.raises(capi.HostError, match="latents: expected dtype float32, got int64"):
            host.decode(torch.zeros(1, 4, 8, 8, dtype=torch.int64).numpy())
        with pytest.raises(capi.HostError, match=r"decoder-plain engine: latent must have shape .* within .*re-export with --shapes"):
            host.decode(torch.zeros(5, 4, 8, 8))  # batch 5 is outside the exported 1..4
        with pytest.raises(capi.HostError, match=r"input_ids: expected token ids in \[0, 1000\)"):
            host.encode_text(torch.full((1, 77), 5000, dtype=torch.int64))  # would index past the embedding table
        with pytest.raises(capi.HostError, match=r"steps: expected an integer in \[1, 1000\]"):
            host.inpaint(prompt_embeds=torch.zeros(1, 77, 32), negative_embeds=torch.zeros(1, 77, 32),
                         image=torch.zeros(1, 3, 64, 64), mask=torch.zeros(1, 1, 64, 64), steps=5000)
        # a handle stays usable after refusals
        assert host.decode(torch.zeros(1, 4, 8, 8)).shape == (1, 3, 64, 64)

    with capi.Host(lib, engines["t2i"]) as host:  # no "decoder", no vae-encoder: refused by what is missing
        with pytest.raises(capi.HostError) as e:
            host.decode(torch.zeros(1, 4, 8, 8), torch.zeros(1, 3, 64, 64), torch.zeros(1, 1, 64, 64))
        assert e.value.status == capi.UNSUPPORTED and "needs a 'decoder' engine" in e.value.message
        with pytest.raises(capi.HostError) as e:  # nor a text encoder: the empty negative prompt cannot be made
            host.inpaint(prompt_embeds=torch.zeros(1, 77, 32), steps=1)
        assert e.value.status == capi.INVALID_ARGUMENT and "negative_embeds" in e.value.message
