"""`pip install asymvq` with no extras runs the main job on torch; asking for an extra names it in one line.

The test runs the CLI and the API in a fresh interpreter in which every optional toolchain is
unimportable (``None`` in ``sys.modules``: what a base install looks like, without a second venv),
and checks that none of them was imported along the way.
"""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

EXTRAS = ("onnx", "onnxruntime", "onnxscript", "onnx_graphsurgeon", "polygraphy", "openvino", "triton", "tensorrt",
          "fastapi", "starlette", "uvicorn", "httpx", "ray", "prometheus_client")

SCRIPT = textwrap.dedent('''
    import contextlib, io, json, sys, tempfile
    from pathlib import Path

    BLOCKED = set(sys.argv[1].split(","))
    for name in BLOCKED:  # None in sys.modules: `import` raises ModuleNotFoundError, find_spec says absent
        sys.modules[name] = None
    import numpy as np
    import PIL.Image
    import torch

    from asymvq.cli import main

    def cli(*args):
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            try:
                main([str(a) for a in args])
                code = 0
            except SystemExit as e:
                code = e.code
        return code, err.getvalue().strip().splitlines()

    out, tmp = {}, Path(tempfile.mkdtemp())
    PIL.Image.fromarray(np.full((32, 32, 3), 128, np.uint8)).save(tmp / "in.png")
    hole = np.zeros((32, 32), np.uint8); hole[8:24, 8:24] = 255
    PIL.Image.fromarray(hole).save(tmp / "hole.png")
    from asymvq.pipeline.latents_io import save_latents
    save_latents(torch.randn(1, 4, 4, 4), tmp / "z.safetensors")

    out["profile"] = cli("profile", "--decoders", "tiny", "--steps", "1", "--warmup", "0", "--repeats", "1",
                         "--json", tmp / "p.json", "--plot", tmp / "p.png")
    out["inpaint"] = cli("inpaint", "--preset", "tiny", "--image", tmp / "in.png", "--mask", tmp / "hole.png",
                         "--prompt", "a cat", "--steps", "2", "--out", tmp / "o.png")
    out["decode"] = cli("decode", "--preset", "tiny", "--latents", tmp / "z.safetensors", "--image", tmp / "in.png",
                        "--mask", tmp / "hole.png", "--out", tmp / "d.png")
    out["export_onnx"] = cli("export", "--component", "decoder", "--preset", "tiny", "--out", tmp / "eng")
    out["serve"] = cli("serve", "--preset", "tiny", "--port", "0")

    import asymvq
    from asymvq.engines import load_engine_dir
    from asymvq.engines.contract import DECODER
    from asymvq.engines.manifest import artifact_entry, new_manifest, weights_sha256, write_manifest
    from asymvq.export.specs import DEFAULT_SHAPES, io_specs
    from asymvq.models.sources import Source, build_module

    pipe = asymvq.InpaintPipeline.from_preset("tiny")
    image = pipe("a cat", torch.rand(1, 3, 32, 32), (torch.rand(1, 1, 32, 32) > 0.5).float(), num_inference_steps=1,
                 output_type="pt").images
    out["api"] = [list(image.shape), bool(torch.isfinite(image).all())]

    def error(fn):
        try:
            fn()
        except Exception as e:  # noqa: BLE001 - the test reads the type and the message
            return [type(e).__name__, str(e)]
        return None

    # An engines directory with an "onnx" artifact (a stand-in file, hashed): loading it needs the onnx extra.
    eng = tmp / "fake"; eng.mkdir()
    module = build_module(DECODER, Source(preset="tiny"))
    inputs, outputs = io_specs(DECODER, module, DEFAULT_SHAPES["tiny"], "fp32")
    (eng / "decoder.onnx").write_bytes(b"not really onnx")
    manifest = new_manifest(precision="fp32", source=Source(preset="tiny").to_dict(), shapes={},
                            latent_space=Source(preset="tiny").latent_space([DECODER]))
    manifest["components"][DECODER] = {"weights_sha256": weights_sha256(module), "inputs": [s.to_dict() for s in inputs],
                                       "outputs": [s.to_dict() for s in outputs],
                                       "artifacts": {"onnx": artifact_entry(eng, [eng / "decoder.onnx"])}}
    write_manifest(eng, manifest)
    out["backend_onnxruntime"] = error(lambda: load_engine_dir(eng, backend="onnxruntime"))
    out["backend_torch"] = error(lambda: load_engine_dir(eng, backend="torch"))
    out["kernels_triton"] = error(lambda: asymvq.AsymmetricDecoder("tiny").set_kernels("triton"))
    out["imported"] = sorted(m for m, mod in sys.modules.items() if m.split(".")[0] in BLOCKED and mod is not None)
    print("RESULT " + json.dumps(out))
''')


def test_base_install_runs_the_main_job_and_names_missing_extras(tmp_path):
    r = subprocess.run([sys.executable, "-c", SCRIPT, ",".join(EXTRAS)], capture_output=True, text=True, timeout=300,
                       cwd=tmp_path)
    lines = [line for line in r.stdout.splitlines() if line.startswith("RESULT ")]
    assert r.returncode == 0 and lines, r.stdout[-3000:] + r.stderr[-3000:]
    out = json.loads(lines[-1][len("RESULT "):])

    for job in ("profile", "inpaint", "decode"):
        code, err = out[job]
        assert code == 0, (job, err)
    assert out["api"] == [[1, 3, 32, 32], True]
    assert out["backend_torch"] is None  # a torch directory loads on the base install

    def one_line_naming(result, extra):
        code, err = result
        assert code == 1 and len(err) == 1, result
        assert f"pip install 'asymvq[{extra}]'" in err[0] and "Traceback" not in err[0], err

    one_line_naming(out["export_onnx"], "onnx")
    one_line_naming(out["serve"], "server")
    for key, extra in (("backend_onnxruntime", "onnx"), ("kernels_triton", "triton")):
        kind, message = out[key]
        assert kind == "MissingExtraError" and f"pip install 'asymvq[{extra}]'" in message, out[key]
    assert out["imported"] == [], out["imported"]


def test_importing_the_cli_loads_no_optional_toolchain():
    """With the extras installed (triton among them), ``import asymvq.cli`` (what ``asymvq --help`` pays)
    still imports none of them: torch.utils.flop_counter, which pulls triton in, loads on the first count."""
    code = ("import sys, asymvq.cli; "
            f"print(sorted(m for m in sys.modules if m.split('.')[0] in {list(EXTRAS)!r}))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == "[]", r.stdout
