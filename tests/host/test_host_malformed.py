"""Malformed engines directories through the C API (issue 14): the manifest cases the Python
reader's fuzzer and property tests refuse (wrong types, missing keys, paths out of the directory,
symlinks out of it, non-UTF-8 and deeply nested JSON) are refused by ``asymvq_open`` with
ASYMVQ_ERR_MANIFEST (or NOT_FOUND/FORMAT) and a one-line message, never a crash, and the library
stays usable."""
from __future__ import annotations

import ctypes as C
import json
import os
import shutil
from pathlib import Path

import asymvq_host as capi
import pytest


def _edit(key_path, value):
    def fn(m):
        node = m
        for k in key_path[:-1]:
            node = node[k]
        if value is _DELETE:
            del node[key_path[-1]]
        else:
            node[key_path[-1]] = value
    return fn


_DELETE = object()
DEC = ("components", "decoder")
CASES = {
    "not-an-object": lambda d: (d / "manifest.json").write_text("[1, 2]"),
    "not-utf8": lambda d: (d / "manifest.json").write_bytes(b'{"format_version": 1, "\xff": 1}'),
    "deep-nesting": lambda d: (d / "manifest.json").write_text("[" * 100000),
    "empty-file": lambda d: (d / "manifest.json").write_text(""),
    "format-version-true": _edit(("format_version",), True),
    "components-a-list": _edit(("components",), []),
    "inputs-a-string": _edit(DEC + ("inputs",), "latent"),
    "spec-dims-a-number": _edit(DEC + ("inputs", 0, "dims"), 4),
    "spec-min-strings": _edit(DEC + ("inputs", 0, "min"), ["a", "b", "c", "d"]),
    "missing-outputs": _edit(DEC + ("outputs",), _DELETE),
    "missing-artifacts": _edit(DEC + ("artifacts",), _DELETE),
    "artifact-files-a-list": _edit(DEC + ("artifacts", "aoti", "files"), ["decoder.pt2"]),
    "artifact-path-a-number": _edit(DEC + ("artifacts", "aoti", "path"), 7),
    "absolute-path": _edit(DEC + ("artifacts", "aoti"), {"path": "/etc/passwd", "files": {"/etc/passwd": "0" * 64},
                                                        "device": "cpu"}),
    "dotdot-path": _edit(DEC + ("artifacts", "aoti"), {"path": "../../etc/passwd",
                                                       "files": {"../../etc/passwd": "0" * 64}, "device": "cpu"}),
    "sha-not-hex": _edit(DEC + ("artifacts", "aoti", "files", "decoder.pt2"), "zz"),
}


def _apply(d: Path, case: str):
    fn = CASES[case]
    if fn.__code__.co_argcount == 1 and fn.__name__ == "fn":  # a manifest edit
        m = json.loads((d / "manifest.json").read_text())
        fn(m)
        (d / "manifest.json").write_text(json.dumps(m))
    else:
        fn(d)


@pytest.mark.parametrize("case", sorted(CASES))
def test_malformed_manifest_is_refused(lib, tiny, tmp_path, case):
    d = tmp_path / "engines"
    shutil.copytree(tiny, d, symlinks=True)
    if case in ("artifact-files-a-list", "sha-not-hex", "artifact-path-a-number") and "aoti" not in \
            json.loads((d / "manifest.json").read_text())["components"]["decoder"]["artifacts"]:
        pytest.skip("no aoti artifact in this directory")
    _apply(d, case)
    h = C.c_void_p()
    status = lib.asymvq_open(str(d).encode(), b"cpu", C.byref(h))
    message = lib.asymvq_last_error().decode("utf-8", "replace")
    assert status in (capi.MANIFEST, capi.FORMAT, capi.NOT_FOUND, capi.INVALID_ARGUMENT), (status, message)
    assert not h and message and "\n" not in message, message
    assert lib.asymvq_open(str(tiny).encode(), b"cpu", C.byref(h)) == 0  # still usable
    lib.asymvq_close(h)


def test_symlink_out_of_the_directory_is_refused(lib, tiny, tmp_path):
    """An artifact replaced by a symlink to an identical file outside: the hash matches, the path must not."""
    d = tmp_path / "engines"
    shutil.copytree(tiny, d, symlinks=True)
    m = json.loads((d / "manifest.json").read_text())
    art = m["components"]["decoder"]["artifacts"]["aoti"]
    outside = tmp_path / "outside.pt2"
    shutil.move(d / art["path"], outside)
    os.symlink(outside, d / art["path"])
    h = C.c_void_p()
    status = lib.asymvq_open(str(d).encode(), b"cpu", C.byref(h))
    message = lib.asymvq_last_error().decode("utf-8", "replace")
    if status == 0:
        lib.asymvq_close(h)
    assert status == capi.MANIFEST and "\n" not in message, message
    assert "leads out of the directory" in message, message
