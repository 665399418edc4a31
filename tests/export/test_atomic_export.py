"""Exports replace an engines directory atomically (asymvq.export.atomic_dir, carry_over).

Three ways of dying: the real ``asymvq export`` CLI SIGKILLed after seeded random delays while it
adds a component to a good directory; a forked commit that exits at every step of the swap (the
moments a random kill rarely hits); and the same with the exchange unavailable (the fallback).
After each, the directory is the old complete one or the new complete one (or, in the fallback
only, absent until the next export puts the old one back): every manifest hash verifies and it
loads. The hidden staging siblings are refused by the loader and removed by the next export.
"""
import json
import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from asymvq.engines import load_engine_dir
from asymvq.engines.manifest import MANIFEST, ManifestError, parse_staging_name, read_manifest, verify_artifact
from asymvq.export import DEFAULT_SHAPES, Source, atomic_dir, export_directory
from asymvq.export.atomic_dir import clean_stale, publish, staging_dir

pytest.importorskip("onnxruntime")

KILLS = 3  # random kills of the real CLI; every filesystem step is killed deterministically below
SEED = 0


def _cli(*args) -> list[str]:
    return [sys.executable, "-m", "asymvq.cli", "export", "--preset", "tiny", *map(str, args)]


def _state(out: Path):
    """(components, {file: sha256}) of a complete directory, every hash checked and every engine loaded;
    None when ``out`` is absent. Anything else fails the test."""
    if not out.exists():
        return None
    manifest = read_manifest(out)  # raises on a missing, empty or partial manifest
    files = {}
    for name, entry in manifest["components"].items():
        for fmt in entry["artifacts"]:
            verify_artifact(out, name, entry, fmt)  # raises on a missing or changed file
            files.update(entry["artifacts"][fmt]["files"])
    assert set(load_engine_dir(out, backend="onnxruntime")) == set(manifest["components"])
    return frozenset(manifest["components"]), files


def _siblings(out: Path) -> list[Path]:
    return [p for p in out.parent.iterdir() if (parse_staging_name(p.name) or ("",))[0] == out.name]


@pytest.mark.slow
def test_killed_cli_exports_leave_the_old_or_the_new_directory(tmp_path):
    out = tmp_path / "eng"
    t0 = time.monotonic()
    subprocess.run(_cli("--component", "decoder-plain", "--out", out), check=True, capture_output=True)
    budget = time.monotonic() - t0  # about what one more component's export takes
    old = _state(out)
    assert old[0] == {"decoder-plain"}
    pristine = tmp_path / "pristine"
    shutil.copytree(out, pristine)
    new_components = {"decoder-plain", "text-encoder"}
    rng = random.Random(SEED)
    killed = []
    for _ in range(KILLS):
        shutil.rmtree(out)
        shutil.copytree(pristine, out)  # every kill interrupts the same re-export over a good directory
        proc = subprocess.Popen(_cli("--component", "text-encoder", "--out", out),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.2, 1.1 * budget))
        proc.send_signal(signal.SIGKILL)
        killed.append(proc.wait() == -signal.SIGKILL)  # False: it had finished
        state = _state(out)
        assert state is not None, "the exchange path never leaves the directory absent"
        assert state[0] in ({"decoder-plain"}, new_components), state[0]
        # the old component survives every kill, with the very file it had
        assert state[1]["decoder-plain.onnx"] == old[1]["decoder-plain.onnx"]
        for p in _siblings(out):  # what the killed run left: never loadable
            with pytest.raises(ManifestError, match="did not finish"):
                read_manifest(p)
    subprocess.run(_cli("--component", "text-encoder", "--out", out), check=True, capture_output=True)
    assert _state(out)[0] == new_components
    assert _siblings(out) == [], "the next export removes what killed ones left"
    assert any(killed), "every kill came after the export had finished: the test tested nothing"


@pytest.fixture(scope="module")
def two_dirs(tmp_path_factory):
    """An engines directory (decoder-plain) and a complete export of another component, to swap in."""
    root = tmp_path_factory.mktemp("atomic")
    old, new = root / "old", root / "new"
    export_directory(old, "decoder-plain", Source(preset="tiny"), shapes=DEFAULT_SHAPES["tiny"])
    export_directory(new, "text-encoder", Source(preset="tiny"), shapes=DEFAULT_SHAPES["tiny"])
    return old, new


class _Die(Exception):
    pass


def _commit_dying_at(step: int, old: Path, new: Path, out: Path, *, exchange: bool) -> bool:
    """Fork; the child stages ``new`` beside ``out`` (a copy of ``old``) and publishes it, exiting at once
    at the ``step``-th filesystem call of the commit. True when the child finished the commit."""
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(old, out)
    pid = os.fork()
    if pid == 0:  # the child: no pytest from here on, only os._exit
        code = 0
        try:
            calls = [0]

            def dying(fn):
                def wrapper(*a, **k):
                    calls[0] += 1
                    if calls[0] == step:
                        os._exit(9)  # as SIGKILL would: no cleanup, no flush
                    return fn(*a, **k)
                return wrapper

            staged = staging_dir(out)
            shutil.rmtree(staged)
            shutil.copytree(new, staged)
            for mod, name in ((os, "rename"), (os, "replace"), (os, "fsync"), (shutil, "rmtree")):
                setattr(mod, name, dying(getattr(mod, name)))
            atomic_dir._exchange = dying(atomic_dir._exchange if exchange else lambda a, b: False)
            publish(staged, out)
        except BaseException:  # noqa: BLE001 (report through the exit code: this is a forked child)
            code = 3
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    assert code in (0, 9), f"the commit failed (exit {code}) instead of finishing or dying"
    return code == 0


@pytest.mark.parametrize("exchange", [True, False], ids=["exchange", "two-renames"])
def test_a_commit_killed_at_any_step_leaves_the_old_or_the_new_directory(two_dirs, tmp_path, exchange):
    old_dir, new_dir = two_dirs
    old, new = _state(old_dir), _state(new_dir)
    out = tmp_path / "eng"
    seen = set()
    for step in range(1, 200):
        finished = _commit_dying_at(step, old_dir, new_dir, out, exchange=exchange)
        state = _state(out)
        assert state in ((old, new, None) if not exchange else (old, new)), f"step {step}: {state}"
        seen.add("absent" if state is None else "old" if state == old else "new")
        if state is None or state == old:
            assert _siblings(out), "an unfinished commit leaves its staged directory beside"
        clean_stale(out)  # what the next export does first
        assert _siblings(out) == [] and _state(out) in (old, new), f"step {step}"
        if finished:
            break
    else:
        pytest.fail("the commit never finished")
    assert {"old", "new"} <= seen, seen
    assert ("absent" in seen) == (not exchange)


def test_re_export_keeps_compatible_components_and_drops_others(two_dirs, tmp_path, caplog):
    old_dir, _ = two_dirs
    out = tmp_path / "eng"
    shutil.copytree(old_dir, out)
    old_onnx = (out / "decoder-plain.onnx").stat().st_ino
    export_directory(out, "text-encoder", Source(preset="tiny"), shapes=DEFAULT_SHAPES["tiny"])
    assert _state(out)[0] == {"decoder-plain", "text-encoder"}
    assert (out / "decoder-plain.onnx").stat().st_ino == old_onnx, "kept files are linked, not copied"
    assert json.loads((out / MANIFEST).read_text())["tokenizer"] == "tokenizer"
    # Another seed is another source: the old components cannot share the manifest, and go with a warning.
    with caplog.at_level(logging.WARNING, logger="asymvq"):
        export_directory(out, "text-encoder", Source(preset="tiny", seed=1), shapes=DEFAULT_SHAPES["tiny"])
    assert _state(out)[0] == {"text-encoder"}
    assert "['decoder-plain', 'text-encoder'] are dropped" in caplog.text and "source" in caplog.text
    assert not (out / "decoder-plain.onnx").exists()


def test_an_emptied_manifest_is_replaced_and_a_foreign_directory_refused(two_dirs, tmp_path):
    old_dir, _ = two_dirs
    out = tmp_path / "eng"
    shutil.copytree(old_dir, out)
    (out / MANIFEST).write_text("")  # what a kill during the old in-place manifest rewrite left
    with pytest.raises(ManifestError, match="not valid JSON"):
        read_manifest(out)
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "a.png").write_bytes(b"x")
    with pytest.raises(ValueError, match="--out: .* holds files but no manifest.json"):
        export_directory(foreign, "text-encoder", Source(preset="tiny"), shapes=DEFAULT_SHAPES["tiny"])
    assert (foreign / "a.png").read_bytes() == b"x"
    export_directory(out, "text-encoder", Source(preset="tiny"), shapes=DEFAULT_SHAPES["tiny"])
    assert _state(out)[0] == {"text-encoder"}
