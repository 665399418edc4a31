#!/usr/bin/env python3
"""Coverage-guided fuzzer (atheris) for the engines-directory reader: ``read_manifest``, then
``component_specs`` and ``verify_artifact`` on every artifact, and ``safe_path`` on the tokenizer
and scheduler sub-folders, as ``load_engine_dir``/``load_tokenizer`` do before building anything.

Input: the bytes of ``manifest.json``, written into a directory that holds one real artifact
file, a symlink out of the directory and a sub-folder. Property: either every artifact the
manifest names verifies and resolves inside the directory, or a ``ManifestError`` whose message
starts with ``engines:``; anything else (another exception, a path outside, a hang) is a finding.

    python tests/fuzz/fuzz_manifest.py out/fuzz/manifest tests/fuzz/corpus/manifest -dict=tests/fuzz/manifest.dict -max_total_time=600
    python tests/fuzz/fuzz_manifest.py --seeds tests/fuzz/corpus/manifest
    python tests/fuzz/fuzz_manifest.py --replay tests/fuzz/corpus/manifest tests/fuzz/regressions/manifest   # e.g. under coverage run
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path

from fuzz_cli import handled_without_atheris

ARTIFACT = b"not really onnx\n"
SHA = hashlib.sha256(ARTIFACT).hexdigest()
# seeds() that read_manifest accepts (every other seed must be refused with an "engines: " error)
VALID_SEEDS = ("valid", "region_missing")
_state: dict = {}


def _root() -> Path:
    if "root" not in _state:
        root = Path(tempfile.mkdtemp(prefix="asymvq-fuzz-manifest-"))
        (root / "decoder.onnx").write_bytes(ARTIFACT)
        (root / "tokenizer").mkdir()
        (root / "scheduler").mkdir()
        (root / "scheduler" / "scheduler_config.json").write_text("{}")
        outside = Path(tempfile.mkdtemp(prefix="asymvq-fuzz-outside-"))
        (outside / "secret.onnx").write_bytes(ARTIFACT)
        os.symlink(outside / "secret.onnx", root / "link.onnx")  # same bytes, same hash: only the path check stops it
        os.symlink(outside, root / "linkdir")
        _state["root"] = root
    return _state["root"]


def check(data: bytes) -> None:
    from asymvq.engines.manifest import ManifestError, component_specs, read_manifest, safe_path, verify_artifact

    root = _root()
    (root / "manifest.json").write_bytes(data)
    top = root.resolve()
    try:
        manifest = read_manifest(root)
        for key in ("tokenizer", "scheduler"):
            if key in manifest:
                assert safe_path(root, manifest[key], key).resolve().is_relative_to(top)
        for name, entry in manifest["components"].items():
            inputs, outputs = component_specs(root, name, entry)
            assert all(len(s.dims) == len(s.min) == len(s.opt) == len(s.max) for s in inputs + outputs)
            for fmt in entry["artifacts"]:
                path = verify_artifact(root, name, entry, fmt)
                assert path.resolve().is_relative_to(top), path
                assert path.read_bytes() == ARTIFACT
    except ManifestError as e:
        assert str(e).startswith("engines:"), str(e)


def valid() -> dict:
    spec = lambda n, dims=("batch", 4, "h", "w"): {"name": n, "dtype": "float32", "dims": list(dims),  # noqa: E731
                                                   "min": [1] * len(dims), "opt": [1] * len(dims), "max": [2] * len(dims)}
    art = {"onnx": {"path": "decoder.onnx", "files": {"decoder.onnx": SHA}, "opset": 17}}
    return {
        "format_version": 2, "created": "2026-11-28T00:00:00+00:00", "precision": "fp32",
        "latent_space": {"channels": 4, "scaling_factor": 0.18215, "shift_factor": 0.0},
        "region": {"default_margin": 4, "time_fit": [-0.0128, 0.9925], "auto_min_speedup": 1.2},
        "source": {"preset": "tiny", "model": None, "decoder": None, "unet_in_channels": 9, "seed": 0},
        "shapes": {"batch": [1, 1, 2], "height": [64, 64, 64], "width": [64, 64, 64]},
        "toolchain": {"torch": "2.13.0"}, "tokenizer": "tokenizer", "scheduler": "scheduler",
        "components": {
            "decoder": {"weights_sha256": "0" * 64, "inputs": [spec("latent"), spec("image"), spec("mask")],
                        "outputs": [spec("sample")], "artifacts": art},
            "text-encoder": {"weights_sha256": "0" * 64, "inputs": [spec("input_ids", ("batch", 77))],
                             "outputs": [spec("last_hidden_state", ("batch", 77, 32))],
                             "artifacts": {"aoti": {"path": "decoder.onnx", "files": {"decoder.onnx": SHA}, "device": "cpu"}}},
        },
    }


def seeds() -> dict[str, bytes]:
    def with_path(p):
        m = valid()
        m["components"]["decoder"]["artifacts"]["onnx"] = {"path": p, "files": {p: SHA}}
        return m

    out = {"valid": valid(), "dotdot": with_path("../../etc/passwd"), "absolute": with_path("/etc/passwd"),
           "symlink_out": with_path("link.onnx"), "symlink_dir": with_path("linkdir/secret.onnx"),
           "tokenizer_out": {**valid(), "tokenizer": "../tokenizer"}}
    bad_types = valid()
    bad_types["components"]["decoder"]["inputs"] = "latent"
    out["bad_types"] = bad_types
    out["format_1"] = {**valid(), "format_version": 1}
    out["latent_space_missing"] = {k: v for k, v in valid().items() if k != "latent_space"}
    for name, field, value in [("scale_zero", "scaling_factor", 0), ("scale_negative", "scaling_factor", -0.18215),
                               ("scale_nan", "scaling_factor", float("nan")), ("scale_inf", "scaling_factor", float("inf")),
                               ("scale_string", "scaling_factor", "0.18215"), ("shift_nan", "shift_factor", float("nan")),
                               ("shift_bool", "shift_factor", False), ("channels_bool", "channels", True),
                               ("channels_float", "channels", 4.0), ("channels_zero", "channels", 0),
                               ("channels_mismatch", "channels", 16)]:
        m = valid()
        m["latent_space"][field] = value
        out[f"latent_{name}"] = m
    out["region_missing"] = {k: v for k, v in valid().items() if k != "region"}  # exported before it: VALID_SEEDS
    for name, field, value in [("margin_negative", "default_margin", -1), ("margin_float", "default_margin", 4.0),
                               ("fit_short", "time_fit", [0.9925]), ("fit_nan", "time_fit", [float("nan"), 1.0]),
                               ("fit_huge", "time_fit", [10**400, 1.0]), ("speedup_zero", "auto_min_speedup", 0),
                               ("speedup_bool", "auto_min_speedup", True)]:
        m = valid()
        m["region"][field] = value
        out[f"region_{name}"] = m
    res = {k: json.dumps(v, indent=1).encode() for k, v in out.items()}
    res["deep"] = b"[" * 5000
    res["not_utf8"] = b'{"format_version": 2, "\xff": 1}'
    return res


_VALUES = [None, True, False, 0, 1, -1, 2, 4, 16, 2**70, 1.5, 0.18215, float("nan"), float("inf"), "", "x", "fp16", "cpu",
           "decoder.onnx", "link.onnx",
           "linkdir/secret.onnx", "../decoder.onnx", "/etc/passwd", "a\\b", "C:x", "tokenizer", "scheduler", SHA, [], {},
           [1], ["batch"], {"path": "decoder.onnx"}]


def mutate(data: bytes, max_size: int, seed: int) -> bytes:
    """Structure-aware half the time: parse the JSON, replace or drop one node, write it back;
    otherwise libFuzzer's byte mutations (which mostly break the JSON and test the parser)."""
    import random

    import atheris

    rng = random.Random(seed)
    try:
        doc = json.loads(data) if rng.random() < 0.5 else None
    except (ValueError, RecursionError):
        doc = None
    if doc is None:
        return atheris.Mutate(data, max_size)
    nodes, stack = [], [doc]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            nodes += [(node, k) for k in node]
            stack += node.values()
        elif isinstance(node, list):
            nodes += [(node, i) for i in range(len(node))]
            stack += node
    if not nodes:
        return atheris.Mutate(data, max_size)
    parent, key = rng.choice(nodes)
    if isinstance(parent, dict) and rng.random() < 0.3:
        del parent[key]
    elif isinstance(parent, dict) and rng.random() < 0.2:
        parent[rng.choice([v for v in _VALUES if isinstance(v, str)] + ["format_version", "source", "files"])] = parent[key]
    else:
        parent[key] = rng.choice(_VALUES + [parent[key], [parent[key]], {"x": parent[key]}])
    out = json.dumps(doc).encode()
    return out[:max_size]


def main() -> None:
    if handled_without_atheris(seeds, check):
        return
    import atheris

    import asymvq.engines.loader  # torch and the rest, uninstrumented

    for m in ("asymvq.engines.manifest", "asymvq.engines.contract", "json", "json.decoder", "json.scanner"):
        sys.modules.pop(m, None)  # reloaded under instrumentation below
    with atheris.instrument_imports(include=["asymvq.engines.manifest", "asymvq.engines.contract", "json"]):
        import asymvq.engines.manifest  # noqa: F401
    _root()
    atheris.Setup(sys.argv, check, custom_mutator=mutate)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
