"""The restricted unpickler (asymvq.models.safe_pickle): Lightning checkpoints load, nothing in a
pickle runs code or changes a live class or object, under every pickle protocol."""
from __future__ import annotations

import collections
import io
import pickle
import subprocess
import sys
import textwrap

import pytest
import torch
from reference_models import diffusers_reference, random_inputs, to_official_layout

from asymvq import CheckpointError, load_decoder
from asymvq.models.safe_pickle import Inert, RestrictedUnpickler


@pytest.fixture(scope="module")
def tiny():
    ref = diffusers_reference("tiny")
    z, image, mask = random_inputs(batch=1, h=2, w=3)
    with torch.no_grad():
        expected = ref.decode(z, image=image, mask=mask).sample
    return to_official_layout(ref.state_dict()), (z, image, mask), expected


def _decodes(path, tiny):
    _, inputs, expected = tiny
    with torch.no_grad():
        got = load_decoder(path)(*inputs)
    assert (got - expected).abs().max().item() <= 1e-5


# -- class tampering: BUILD on an allowlisted class -------------------------------------------------
def _tamper_pickle(protocol: int) -> bytes:
    """``collections.Counter`` (on torch's allowlist), then BUILD with slot state {"most_common": None}:
    a plain unpickler runs ``setattr(Counter, "most_common", None)`` for the whole process."""
    if protocol == 0:
        return b"ccollections\nCounter\n(N(dS'most_common'\nNstb."
    head = b"\x80" + bytes([protocol])
    if protocol >= 4:
        glob = b"\x8c\x0bcollections\x8c\x07Counter\x93"  # SHORT_BINUNICODE x2, STACK_GLOBAL
    else:
        glob = b"ccollections\nCounter\n"
    return head + glob + b"N}X\x0b\x00\x00\x00most_commonNs\x86b."


@pytest.mark.parametrize("protocol", [0, 2, 3, 4, 5])
def test_build_on_an_allowlisted_class_is_refused_and_changes_nothing(tmp_path, protocol):
    original = collections.Counter.most_common
    data = _tamper_pickle(protocol)
    with pytest.raises(pickle.UnpicklingError, match="refusing BUILD .* on the class collections.Counter"):
        RestrictedUnpickler(io.BytesIO(data)).load()
    path = tmp_path / "tamper.ckpt"
    path.write_bytes(data)
    with pytest.raises(CheckpointError, match="tamper.ckpt"):
        load_decoder(path)
    assert collections.Counter.most_common is original


def test_the_gadget_does_tamper_with_a_plain_unpickler():
    """The test above is only worth something if the gadget is real: a plain pickle.loads sets the attribute."""
    original = collections.Counter.most_common
    try:
        pickle.loads(_tamper_pickle(2))
        assert collections.Counter.most_common is None
    finally:
        collections.Counter.most_common = original


@pytest.mark.parametrize("op, data", [
    # SETITEMS into an allowlisted non-container (torch.Size is a tuple subclass: no __setitem__, but refused first)
    ("SETITEMS", b"\x80\x02ctorch\nSize\n)\x85R(X\x01\x00\x00\x00aK\x01u."),
    # APPENDS onto an OrderedDict (a container, but not a list)
    ("APPENDS", b"\x80\x02ccollections\nOrderedDict\n)R(K\x01e."),
    # BUILD on an OrderedDict with a non-string key
    ("BUILD", b"\x80\x02ccollections\nOrderedDict\n)R}K\x01K\x02sb."),
])
def test_mutating_opcodes_reach_only_plain_containers(op, data):
    with pytest.raises(pickle.UnpicklingError, match=f"refusing {op}"):
        RestrictedUnpickler(io.BytesIO(data)).load()


# -- what a real checkpoint holds --------------------------------------------------------------------
FOREIGN = '''
import os
class AttributeDict(dict):  # Lightning's hyper-parameter container: a dict subclass
    def __getattr__(self, k):
        try:
            return self[k]
        except KeyError:
            raise AttributeError(k) from None
class Stateful:
    def __init__(self): self.kth = [1, 2]; self.best = {"score": 0.5}
    def __setstate__(self, s): raise RuntimeError("__setstate__ ran")
class Slotted:
    __slots__ = ("a",)
    def __init__(self): self.a = 3
class Evil:
    def __reduce__(self): return (os.system, ("touch MARKER",))
'''


# torch.save writes protocol 0 but torch.load cannot read it back (text persistent ids: "saved_id must
# be a tuple"); the raw-pickle tests above cover protocol 0.
@pytest.mark.parametrize("protocol", [1, 2, 3, 4, 5])
def test_lightning_checkpoint_with_dict_subclass_hparams_loads_under_every_protocol(tmp_path, tiny, protocol):
    sd, _, _ = tiny
    marker = tmp_path / "code-ran"
    mods = tmp_path / "mods"
    mods.mkdir()
    (mods / "foreign_objs.py").write_text(FOREIGN.replace("MARKER", str(marker)))
    sys.path.insert(0, str(mods))
    try:
        import foreign_objs as f

        ckpt = {"state_dict": sd, "epoch": 3, "hyper_parameters": f.AttributeDict(lr=1e-4, ch=[1, 2, 4]),
                "callbacks": {"cb": f.Stateful()}, "trap": f.Evil(), "tags": {"a", "b"}}
        if protocol >= 2:  # protocol 1 cannot pickle a __slots__ object at all
            ckpt["callbacks"]["slots"] = f.Slotted()
        torch.save(ckpt, tmp_path / "lightning.ckpt", pickle_protocol=protocol)
    finally:
        sys.path.remove(str(mods))
        sys.modules.pop("foreign_objs", None)
    _decodes(tmp_path / "lightning.ckpt", tiny)
    assert not marker.exists(), "the checkpoint ran code"
    # what the placeholders absorbed, without running anything
    raw = torch.load(tmp_path / "lightning.ckpt", weights_only=False,
                     pickle_module=__import__("asymvq.models.safe_pickle", fromlist=["x"]).restricted_pickle)
    hp = raw["hyper_parameters"]
    # protocol 1 pickles a dict subclass as copyreg._reconstructor(cls, dict, items): its args
    items = hp._inert["items"] if protocol >= 2 else hp._inert["args"][2]
    assert isinstance(hp, Inert) and items == {"lr": 1e-4, "ch": [1, 2, 4]}
    assert isinstance(raw["callbacks"]["cb"], Inert) and raw["tags"] == {"a", "b"}


def test_real_omegaconf_dictconfig_hparams_load_without_omegaconf(tmp_path, tiny):
    omegaconf = pytest.importorskip("omegaconf")
    sd, (z, image, mask), expected = tiny
    cfg = omegaconf.OmegaConf.create({"model": {"ch": 128, "ch_mult": [1, 2, 4, 4]}, "lr": 4.5e-6})
    torch.save({"state_dict": sd, "hyper_parameters": cfg}, tmp_path / "omegaconf.ckpt")
    torch.save({"z": z, "image": image, "mask": mask, "expected": expected}, tmp_path / "io.pt")
    script = textwrap.dedent(f"""
        import sys
        sys.modules["omegaconf"] = None  # importing it now fails: the loader must not need it
        import torch
        from asymvq import load_decoder
        io = torch.load({str(tmp_path / 'io.pt')!r}, weights_only=True)
        dec = load_decoder({str(tmp_path / 'omegaconf.ckpt')!r})
        with torch.no_grad():
            err = (dec(io["z"], io["image"], io["mask"]) - io["expected"]).abs().max().item()
        assert err <= 1e-5, err
        print("ok", err)
    """)
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.startswith("ok"), r.stdout + r.stderr[-3000:]
