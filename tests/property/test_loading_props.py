"""Property: loading a decoder checkpoint or an engines directory either gives the model (equal to
the saved one where the file is intact) or raises the documented error (CheckpointError /
ManifestError, both ValueErrors) naming the file; it never crashes, never runs code from the file
and never loads half a model."""
from __future__ import annotations

import io
import json
import os
import pickle
import re
import shutil
import sys
import zipfile

import fuzz_manifest  # tests/fuzz: the manifest fuzzer's check() and seeds
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from props_settings import examples

from asymvq import AsymmetricDecoder, CheckpointError, load_decoder, save_decoder
from asymvq.engines.manifest import ManifestError


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    torch.manual_seed(0)
    dec = AsymmetricDecoder("tiny").eval()
    root = tmp_path_factory.mktemp("saved")
    save_decoder(dec, root / "ours")
    z = torch.randn(1, 4, 2, 2)
    with torch.no_grad():
        expected = dec(z)
    return root, dec, z, expected


def _loads_or_names(path, name_in_error: str, saved=None):
    """The property: a CheckpointError naming the file, or a decoder with finite float weights."""
    try:
        dec = load_decoder(path)
    except CheckpointError as e:
        assert name_in_error in str(e), str(e)
        return None
    assert all(v.is_floating_point() and bool(torch.isfinite(v).all()) for v in dec.state_dict().values())
    return dec


# -- safetensors: truncated, flipped, random ------------------------------------------------------
@examples(25)
@given(data=st.data(), kind=st.sampled_from(["truncate", "flip-header", "flip-anywhere", "random", "empty",
                                              "huge-header-length", "header-not-json"]))
def test_corrupt_safetensors(saved, tmp_path_factory, data, kind):
    root, _, z, expected = saved
    good = (root / "ours" / "model.safetensors").read_bytes()
    header_len = int.from_bytes(good[:8], "little")
    if kind == "truncate":
        blob = good[: data.draw(st.integers(0, len(good) - 1))]
    elif kind.startswith("flip"):
        hi = 8 + header_len if kind == "flip-header" else len(good)
        blob = bytearray(good)
        for i in data.draw(st.lists(st.integers(0, hi - 1), min_size=1, max_size=4)):
            blob[i] ^= data.draw(st.integers(1, 255))
        blob = bytes(blob)
    elif kind == "random":
        blob = data.draw(st.binary(max_size=2048))
    elif kind == "empty":
        blob = b""
    elif kind == "huge-header-length":
        blob = (2**62).to_bytes(8, "little") + good[8:]
    else:
        blob = len(b"{not json").to_bytes(8, "little") + b"{not json" + good[8 + header_len:]
    folder = tmp_path_factory.mktemp("st")
    shutil.copy(root / "ours" / "config.json", folder / "config.json")
    (folder / "model.safetensors").write_bytes(blob)
    dec = _loads_or_names(folder, str(folder))
    if dec is not None and blob == good:
        with torch.no_grad():
            assert torch.equal(dec(z), expected)


# -- .ckpt: not an archive, not a state dict, objects weights_only refuses ---------------------------
def _torch_bytes(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


CKPT_BAD = {
    "random-bytes": lambda good: os.urandom(512),
    "text-file": lambda good: b"this is not a checkpoint\n",
    "truncated-zip": lambda good: good[: len(good) // 2],
    "zip-of-other-files": lambda good: _zip({"readme.txt": b"hello"}),
    "plain-pickle-dict": lambda good: pickle.dumps({"a": 1}),
    "pickle-of-list": lambda good: _torch_bytes([torch.zeros(1)]),
    "pickle-of-tensor": lambda good: _torch_bytes(torch.zeros(3)),
    "pickle-of-int": lambda good: _torch_bytes(3),
    "dict-of-ints": lambda good: _torch_bytes({"decoder.conv_in.weight": 1}),
    "dict-int-keys": lambda good: _torch_bytes({1: torch.zeros(1)}),
    "empty-dict": lambda good: _torch_bytes({}),
    "state-dict-a-list": lambda good: _torch_bytes({"state_dict": [torch.zeros(1)]}),
    "state-dict-of-strings": lambda good: _torch_bytes({"state_dict": {"a": "b"}}),
    "integer-weights": lambda good: _torch_bytes({"state_dict": {k: v.to(torch.int32) if v.is_floating_point() else v
                                                                 for k, v in torch.load(io.BytesIO(good))["state_dict"].items()}}),
    "nan-weights": lambda good: _torch_bytes({"state_dict": {k: v.fill_(float("nan")) if "conv_in" in k else v
                                                             for k, v in torch.load(io.BytesIO(good))["state_dict"].items()}}),
}


def _zip(files: dict) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
    return buf.getvalue()


def _official(dec: AsymmetricDecoder) -> dict:
    """Our keys -> the official LDM layout (the inverse of checkpoints.convert_ldm_state_dict)."""
    rules = [(r"^condition_encoder\.", "encoder."), (r"^conv_norm_out\.", "norm_out."),
             (r"^up_blocks\.(\d)\.", lambda m: f"up.{3 - int(m.group(1))}."), (r"\.upsamplers\.0\.", ".upsample."),
             (r"\.conv_shortcut\.", ".nin_shortcut."), (r"^mid_block\.resnets\.(\d)\.", lambda m: f"mid.block_{int(m.group(1)) + 1}."),
             (r"\.resnets\.", ".block."), (r"^mid_block\.attentions\.0\.to_out\.0\.", "mid.attn_1.proj_out."),
             (r"^mid_block\.attentions\.0\.to_(q|k|v)\.", lambda m: f"mid.attn_1.{m.group(1)}."),
             (r"^mid_block\.attentions\.0\.group_norm\.", "mid.attn_1.norm.")]
    out = {}
    for k, v in dec.state_dict().items():
        if k.startswith("post_quant_conv."):
            out[k] = v.clone()
            continue
        for pattern, repl in rules:
            k = re.sub(pattern, repl, k)
        out["decoder." + k] = v[:, :, None, None].clone() if ".attn_1." in k and k.endswith(".weight") and v.ndim == 2 else v.clone()
    return out


@pytest.fixture(scope="module")
def official_bytes(saved):
    _, dec, _, _ = saved
    return _torch_bytes({"state_dict": _official(dec), "epoch": 3})


@pytest.mark.parametrize("kind", sorted(CKPT_BAD))
def test_bad_ckpt_is_a_checkpointerror_naming_the_file(tmp_path, official_bytes, kind):
    path = tmp_path / "bad.ckpt"
    path.write_bytes(CKPT_BAD[kind](official_bytes))
    with pytest.raises(CheckpointError, match=re.escape(str(path))):
        load_decoder(path)


def test_official_checkpoint_decodes_like_the_saved_decoder(tmp_path, saved, official_bytes):
    _, _, z, expected = saved
    (tmp_path / "base.ckpt").write_bytes(official_bytes)
    with torch.no_grad():
        assert torch.equal(load_decoder(tmp_path / "base.ckpt")(z), expected)


LIGHTNING_CLASSES = '''
import os
class DictConfig:  # stands for omegaconf.DictConfig: weights_only refuses it
    def __init__(self, d): self._content = dict(d); self._flags = {"readonly": True}
class ModelCheckpoint:  # callback state
    def __init__(self): self.best_model_score = 0.5; self.kth = [1, 2]
class Evil:
    def __reduce__(self): return (os.system, ("touch MARKER",))
'''


def test_lightning_checkpoint_with_foreign_objects_loads_without_running_code(tmp_path, saved):
    _, dec, z, expected = saved
    marker = tmp_path / "code-ran"
    mod = tmp_path / "mods"
    mod.mkdir()
    (mod / "fake_lightning_objs.py").write_text(LIGHTNING_CLASSES.replace("MARKER", str(marker)))
    sys.path.insert(0, str(mod))
    try:
        import fake_lightning_objs as f

        ckpt = {"state_dict": _official(dec), "epoch": 7, "hyper_parameters": f.DictConfig({"lr": 1e-4}),
                "callbacks": {"ModelCheckpoint": f.ModelCheckpoint()}, "hparams_name": "kwargs", "trap": f.Evil()}
        torch.save(ckpt, tmp_path / "lightning.ckpt")
    finally:
        sys.path.remove(str(mod))
        sys.modules.pop("fake_lightning_objs", None)
    with pytest.raises(Exception, match="Weights only load failed"):  # what weights_only alone says
        torch.load(tmp_path / "lightning.ckpt", weights_only=True)
    loaded = load_decoder(tmp_path / "lightning.ckpt")
    assert not marker.exists(), "the checkpoint ran code"
    with torch.no_grad():
        assert torch.equal(loaded(z), expected)


# -- config.json with wrong types -------------------------------------------------------------------
JSON = st.recursive(st.none() | st.booleans() | st.integers(-10, 1000) | st.floats(allow_nan=True) | st.text(max_size=5),
                    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=4), c, max_size=3), max_leaves=6)


@examples(40)
@given(data=st.data(), cls=st.sampled_from(["ours", "AsymmetricAutoencoderKL", "AutoencoderKL"]))
def test_config_json_with_wrong_values(saved, tmp_path_factory, data, cls):
    root, _, _, _ = saved
    cfg = json.loads((root / "ours" / "config.json").read_text())
    if cls != "ours":
        cfg = {"_class_name": cls, "up_block_out_channels": [16, 32, 64, 64], "block_out_channels": [16, 32, 64, 64],
               "layers_per_up_block": 1, "layers_per_block": 1, "norm_num_groups": 8, "latent_channels": 4}
    key = data.draw(st.sampled_from(sorted(cfg)), label="key")
    cfg[key] = data.draw(JSON, label="value")
    folder = tmp_path_factory.mktemp("cfg")
    (folder / "config.json").write_text(json.dumps(cfg))
    shutil.copy(root / "ours" / "model.safetensors", folder / ("model.safetensors" if cls == "ours" else
                                                               "diffusion_pytorch_model.safetensors"))
    _loads_or_names(folder, str(folder))


@pytest.mark.parametrize("text", [b"[1, 2]", b"{", b"\xff\xfe{}", b"[" * 3000, b"null", b'"x"'])
def test_config_json_not_an_object(tmp_path, text):
    (tmp_path / "config.json").write_bytes(text)
    with pytest.raises(CheckpointError, match="config.json"):
        load_decoder(tmp_path)


# -- manifest.json -----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(fuzz_manifest.seeds()))
def test_manifest_seed_cases(name):
    data = fuzz_manifest.seeds()[name]
    fuzz_manifest.check(data)  # the fuzzer's property
    from asymvq.engines.manifest import read_manifest, safe_path, verify_artifact

    root = fuzz_manifest._root()
    (root / "manifest.json").write_bytes(data)
    if name in fuzz_manifest.VALID_SEEDS:  # read without an error
        read_manifest(root)
        return
    with pytest.raises(ManifestError, match=r"^engines: "):
        m = read_manifest(root)
        safe_path(root, m["tokenizer"], "tokenizer")
        for comp, entry in m["components"].items():
            for fmt in entry["artifacts"]:
                verify_artifact(root, comp, entry, fmt)


def _paths(doc, prefix=()):
    if isinstance(doc, dict):
        for k, v in doc.items():
            yield prefix + (k,)
            yield from _paths(v, prefix + (k,))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            yield prefix + (i,)
            yield from _paths(v, prefix + (i,))


VALID_PATHS = list(_paths(fuzz_manifest.valid()))


@examples(60)
@given(data=st.data(), edit=st.sampled_from(["replace", "delete"]))
def test_manifest_with_one_node_changed(data, edit):
    doc = fuzz_manifest.valid()
    path = data.draw(st.sampled_from(VALID_PATHS), label="path")
    parent = doc
    for k in path[:-1]:
        parent = parent[k]
    if edit == "delete":
        del parent[path[-1]]
    else:
        parent[path[-1]] = data.draw(JSON | st.sampled_from(["../../etc/passwd", "/etc/passwd", "link.onnx",
                                                               "linkdir/secret.onnx", "a\\b", fuzz_manifest.SHA]),
                                     label="value")
    fuzz_manifest.check(json.dumps(doc).encode())


BAD_KINDS = (sorted(CKPT_BAD) + ["safetensors-" + k for k in ("truncate", "flip-header", "random", "empty",
                                                              "huge-header-length", "header-not-json")]
             + ["lightning-foreign-objects", "config-wrong-type", "config-not-object"]
             + ["manifest-" + k for k in fuzz_manifest.seeds() if k != "valid"] + ["manifest-missing-key"])
