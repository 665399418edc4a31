#!/usr/bin/env python3
"""Coverage-guided fuzzer (atheris) for the HTTP form: ``parse_form`` (the multipart splitter) and ``parse_job``.

Input: the Content-Type header, a newline, then the body. Property: either a job whose every
field has the documented type, or a ``RequestError`` with a 4xx status and a one-line message;
anything else (another exception, a 5xx, a hang) is a finding.

    python tests/fuzz/fuzz_form.py out/fuzz/form tests/fuzz/corpus/form -dict=tests/fuzz/form.dict -max_total_time=600
    python tests/fuzz/fuzz_form.py --seeds tests/fuzz/corpus/form
    python tests/fuzz/fuzz_form.py --replay tests/fuzz/corpus/form tests/fuzz/regressions/form   # e.g. under coverage run

``check`` is also what tests/fuzz/test_fuzz_corpus.py runs on every committed corpus input.
"""
from __future__ import annotations

import io
import sys

from fuzz_cli import handled_without_atheris

MAX_PIXELS, MAX_STEPS = 64 * 64, 50
BOUNDARY = b"XyZzy42"
_mod = None

def _form():
    global _mod
    if _mod is None:
        from asymvq.serve import http_form

        _mod = http_form
    return _mod


def check(data: bytes) -> None:
    form = _form()
    ctype, _, body = data.partition(b"\n")
    try:
        fields = form.parse_form(body, ctype.decode("latin-1"))
        assert all(isinstance(k, str) and isinstance(v, bytes) for k, v in fields.items()), fields
        job = form.parse_job(fields, max_pixels=MAX_PIXELS, max_steps=MAX_STEPS)
    except form.RequestError as e:
        assert 400 <= e.status < 500, (e.status, e.message)
        assert isinstance(e.message, str) and e.message and "\n" not in e.message, repr(e.message)
        return
    src, hole = job["source"], job["hole"]
    assert src.mode == "RGB" and hole.mode == "L" and src.size == hole.size, (src, hole)
    w, h = src.size
    assert w % 8 == 0 and h % 8 == 0 and 0 < w * h <= MAX_PIXELS, src.size
    assert isinstance(job["prompt"], str) and 1 <= job["steps"] <= MAX_STEPS
    assert 0.0 <= job["guidance"] <= 50.0 and 0 <= job["seed"] < 2**63


def _png(size=(8, 8), mode="RGB", fmt="PNG") -> bytes:
    import PIL.Image

    buf = io.BytesIO()
    PIL.Image.new(mode, size, 128).save(buf, format=fmt)
    return buf.getvalue()


def body(parts: list[tuple[str, bytes]], boundary: bytes = BOUNDARY) -> bytes:
    out = b""
    for name, data in parts:
        fn = b'; filename="f.png"' if name in ("image", "mask") else b""
        out += b"--" + boundary + b'\r\nContent-Disposition: form-data; name="' + name.encode() + b'"' + fn + b"\r\n\r\n" + data + b"\r\n"
    return out + b"--" + boundary + b"--\r\n"


def seeds() -> dict[str, bytes]:
    ctype = b"multipart/form-data; boundary=" + BOUNDARY + b"\n"
    good = [("image", _png()), ("mask", _png(mode="L")), ("prompt", b"a red sofa")]
    full = good + [("negative_prompt", b"blur"), ("steps", b"3"), ("guidance", b"7.5"), ("seed", b"7"),
                   ("strength", b"0.5"), ("scheduler", b"euler")]
    return {
        "good": ctype + body(good),
        "full": ctype + body(full),
        "jpeg": ctype + body([("image", _png(fmt="JPEG")), ("mask", _png(mode="L", fmt="JPEG")), ("prompt", b"x")]),
        "quoted_boundary": b'multipart/form-data; boundary="a b"\n' + body(good, b"a b"),
        "dup": ctype + body(good + [("prompt", b"again")]),
        "truncated": (ctype + body(good))[:-40],
        "no_parts": ctype + b"--" + BOUNDARY + b"--\r\n",
        "wrong_type": b"application/json\n{}",
        "big_image": ctype + body([("image", _png((128, 128))), ("mask", _png((128, 128), "L")), ("prompt", b"x")]),
    }


def main() -> None:
    if handled_without_atheris(seeds, check):
        return
    import atheris

    import asymvq.pipeline.inpaint_run  # noqa: F401  (torch and the rest, uninstrumented: only the parsers are)

    for m in [m for m in sys.modules if m == "email" or m.startswith("email.")]:
        del sys.modules[m]  # loaded by torch already: reload them under instrumentation
    with atheris.instrument_imports(include=["asymvq.serve.http_form", "email", "PIL.PngImagePlugin",
                                             "PIL.JpegImagePlugin", "PIL.ImageFile"]):
        # the parsers under test, loaded (again) under instrumentation
        import PIL.JpegImagePlugin
        import PIL.PngImagePlugin  # noqa: F401

        from asymvq.serve import http_form  # noqa: F401
    _form()
    atheris.Setup(sys.argv, check)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
