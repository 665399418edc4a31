"""Property: OpenAI's edit form (``parse_edit``, what ``POST /v1/images/edits`` runs on every request) either
yields a job and options that match what was sent, or raises RequestError with a 4xx status and a one-line
message whose field OpenAI's error shape names; generated fields: masks with and without alpha, n, size,
formats, streaming flags, asymvq's extras."""
from __future__ import annotations

import io

import numpy as np
import PIL.Image
from hypothesis import event, given
from hypothesis import strategies as st
from props_settings import examples

from asymvq.serve.http_form import RequestError
from asymvq.serve.openai_edits import OPENAI_FIELDS, openai_error, parse_edit


def _png(mode: str, size=(16, 16), alpha=None) -> bytes:
    im = PIL.Image.new(mode, size, 128 if mode in ("L", "RGB") else (128,) * len(mode))
    if alpha is not None:
        im.putalpha(PIL.Image.fromarray(alpha))
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return buf.getvalue()


HALF = np.zeros((16, 16), np.uint8)
HALF[:, :8] = 255  # left half opaque, right half transparent: the edit area
IMAGES = {"rgb": _png("RGB"), "rgba": _png("RGB", alpha=HALF), "other-size": _png("RGB", (24, 16)), "junk": b"\x89PNG\r\n"}
MASKS = {"alpha": _png("RGB", alpha=HALF), "la": _png("L", alpha=HALF), "no-alpha": _png("L"),
         "other-size": _png("RGB", (24, 16), alpha=np.zeros((16, 24), np.uint8)), "empty": b""}
VALUES = {"n": st.sampled_from(["1", "2", "4", "5", "0", "x", ""]), "size": st.sampled_from(["auto", "16x16", "32x32", "big", ""]),
          "response_format": st.sampled_from(["b64_json", "url", "B64_JSON", "jpeg"]),
          "output_format": st.sampled_from(["png", "jpeg", "webp", "gif"]), "output_compression": st.sampled_from(["0", "80", "101"]),
          "stream": st.sampled_from(["false", "true", "maybe"]), "partial_images": st.sampled_from(["0", "1"]),
          "mask_mode": st.sampled_from(["alpha", "white", "black"]), "quality": st.sampled_from(["auto", "high"]),
          "background": st.sampled_from(["auto", "opaque", "transparent"]), "model": st.text(max_size=8),
          "steps": st.sampled_from(["2", "60", "0", "61", "x"]), "seed": st.integers(-1, 2**64).map(str),
          "guidance": st.one_of(st.floats(0, 50), st.floats(allow_nan=True)).map(str), "prompt": st.text(max_size=10)}


@examples(300)
# weighted towards forms that pass, so that accepted jobs are checked often too
@given(image=st.sampled_from(["rgb"] * 3 + ["rgba"] * 3 + ["other-size", "junk"]),
       mask=st.sampled_from(["alpha"] * 4 + ["la"] * 2 + [None] * 2 + ["no-alpha", "other-size", "empty"]),
       names=st.lists(st.sampled_from(sorted(VALUES)), max_size=3, unique=True), data=st.data())
def test_generated_edit_forms(image, mask, names, data):
    fields = {"image": IMAGES[image], "prompt": b"a sofa"}
    if mask is not None:
        fields["mask"] = MASKS[mask]
    for name in names:
        fields[name] = data.draw(VALUES[name]).encode("utf-8", "surrogatepass")
    try:
        job, opts = parse_edit(fields, max_pixels=4096, max_steps=60, max_n=4)
    except RequestError as e:
        event(e.message.split(":")[0])
        assert 400 <= e.status < 500 and "\n" not in e.message and e.message.split(":")[0] in OPENAI_FIELDS, e.message
        err = openai_error(e.status, e.message)["error"]
        assert err["param"] == e.message.split(":")[0] and err["type"] == "invalid_request_error"
        return
    event("accepted")
    w, h = (24, 16) if image == "other-size" else (16, 16)  # the image's own size, with a mask of that size
    assert 1 <= opts["n"] <= 4 and opts["size"] == f"{w}x{h}" and opts["output_format"] in ("png", "jpeg", "webp")
    assert job["source"].size == job["hole"].size == (w, h) and 1 <= job["steps"] <= 60
    hole = np.asarray(job["hole"])
    if image == "other-size":  # its mask: all transparent, so all to edit
        assert fields.get("mask_mode", b"alpha").strip().lower() == b"white" or (hole == 255).all()
    elif fields.get("mask_mode", b"alpha").strip().lower() != b"white":
        # OpenAI's rule: the transparent half (of the mask, or of the image without one) and only it
        assert (hole[:, 8:] == 255).all() and (hole[:, :8] == 0).all()
