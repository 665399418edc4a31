"""Property: the HTTP form (``parse_form`` + ``parse_job``, what ``asymvq serve`` and the Ray Serve
ingress run on every request) either yields a job equal to what was sent or raises RequestError
with a 4xx status and a one-line message naming the field; generated multipart bodies: truncated,
duplicated and unknown fields, huge headers, wrong boundaries, RFC 2231 names, damaged images."""
from __future__ import annotations

import fuzz_form  # tests/fuzz: the form fuzzer's check(), body() and seed images
import pytest
from hypothesis import given
from hypothesis import strategies as st
from props_settings import examples

from asymvq.serve.http_form import FIELDS, RequestError, parse_form, parse_job

PNG, MASK, JPEG = fuzz_form._png(), fuzz_form._png(mode="L"), fuzz_form._png(fmt="JPEG")


def _noise_png(size=(32, 32)) -> bytes:
    import io

    import numpy as np
    import PIL.Image

    buf = io.BytesIO()
    PIL.Image.fromarray(np.random.RandomState(0).randint(0, 256, (size[1], size[0], 3)).astype(np.uint8)).save(buf, "PNG")
    return buf.getvalue()


NOISE = _noise_png()
BOUNDARIES = st.sampled_from([b"XyZzy42", b"----WebKitFormBoundary7MA4YWxkTrZu0gW", b"a b", b"x" * 70, b"'()+_,-./:=?"])
VALUES = {"prompt": st.text(max_size=20), "negative_prompt": st.text(max_size=10),
          "steps": st.integers(-3, 60).map(str), "guidance": st.floats(allow_nan=True).map(str),
          "seed": st.integers(-1, 2**64).map(str), "strength": st.floats(-1, 2).map(str),
          "scheduler": st.sampled_from(["ddim", "DPM++", "euler-discrete", "lms", ""])}


@st.composite
def forms(draw):
    boundary = draw(BOUNDARIES)
    parts = [("image", draw(st.sampled_from([PNG, JPEG, PNG[:40], b"", b"GIF89a"]))), ("mask", draw(st.sampled_from([MASK, PNG])))]
    for name in draw(st.lists(st.sampled_from(sorted(VALUES)), max_size=4, unique=True)):
        parts.append((name, draw(VALUES[name]).encode("utf-8", "surrogatepass")))
    if draw(st.booleans()):
        parts.append(draw(st.sampled_from([("prompt", b"again"), ("stpes", b"3"), ("image", PNG), ("\u00e9", b"x")])))
    body = fuzz_form.body(draw(st.permutations(parts)), boundary)
    mutate = draw(st.sampled_from(["none", "truncate", "wrong-boundary", "huge-header", "bare-lf", "rfc2231",
                                   "no-closing", "junk-prefix", "bad-content-type"]))
    ctype = b'multipart/form-data; boundary="' + boundary + b'"'
    if mutate == "truncate":
        body = body[: draw(st.integers(0, len(body) - 1))]
    elif mutate == "wrong-boundary":
        ctype = b"multipart/form-data; boundary=" + draw(st.sampled_from([b"other", b"", b"\xff\xfe", b"a" * 71, b"a;b"]))
    elif mutate == "huge-header":
        body = body.replace(b"Content-Disposition", b"X-Pad: " + b"p" * 100_000 + b"\r\nContent-Disposition", 1)
    elif mutate == "bare-lf":
        body = body.replace(b"\r\n", b"\n")
    elif mutate == "rfc2231":
        body = body.replace(b'name="prompt"', b"name*=UTF-8''%70rompt", 1)
    elif mutate == "no-closing":
        body = body[: body.rfind(b"--" + boundary)]
    elif mutate == "junk-prefix":
        body = draw(st.binary(max_size=30)) + body
    elif mutate == "bad-content-type":
        ctype = draw(st.sampled_from([b"", b"application/json", b"multipart/form-data", b"text/plain; boundary=x",
                                      b"multipart/form-data; boundary*=''x", b"multipart/form-data; boundary*0*=''x; boundary*1=y"]))
    return ctype, body, parts, mutate


@examples(400)
@given(form=forms())
def test_generated_bodies(form):
    ctype, body, parts, mutate = form
    fuzz_form.check(ctype + b"\n" + body)  # the fuzzer's property: a valid job or a one-line 4xx
    if mutate in ("none", "junk-prefix", "rfc2231") and ctype.startswith(b"multipart/form-data; boundary=\""):
        names = [n for n, _ in parts]
        try:
            fields = parse_form(body, ctype.decode("latin-1"))
        except RequestError as e:  # only a repeated or unknown field may be refused in an intact body
            assert len(set(names)) < len(names) or not set(names) <= set(FIELDS), e.message
            return
        assert fields == {n: d for n, d in parts}  # what was sent, byte for byte


def test_a_good_form_is_the_job_sent():
    fields = {"image": PNG, "mask": MASK, "prompt": "a red sofa \u00e9".encode(), "steps": b" 7 ", "guidance": b"3.5",
              "seed": b"9", "strength": b"0.5", "scheduler": b"DPM-Solver++"}
    job = parse_job(fields, max_pixels=4096, max_steps=50)
    assert (job["prompt"], job["steps"], job["guidance"], job["seed"], job["strength"], job["scheduler"]) == \
        ("a red sofa \u00e9", 7, 3.5, 9, 0.5, "dpm++")
    assert job["source"].size == (8, 8) and job["source"].mode == "RGB" and job["hole"].mode == "L"


FIELD_BAD = {
    "steps-text": ("steps", b"ten"), "steps-zero": ("steps", b"0"), "steps-too-many": ("steps", b"51"),
    "guidance-nan": ("guidance", b"nan"), "guidance-inf": ("guidance", b"inf"), "guidance-negative": ("guidance", b"-1"),
    "seed-negative": ("seed", b"-1"), "seed-too-big": ("seed", str(2**63).encode()), "strength-inf": ("strength", b"inf"),
    "scheduler-unknown": ("scheduler", b"lms"), "prompt-not-utf8": ("prompt", b"\xff\xfe"), "image-empty": ("image", b""),
    "image-gif": ("image", b"GIF89a\x01\x00\x01\x00"), "image-truncated": ("image", NOISE[: len(NOISE) // 2]),
    "image-not-multiple-of-8": ("image", fuzz_form._png((12, 8))), "image-too-big": ("image", fuzz_form._png((128, 128))),
    "mask-other-size": ("mask", fuzz_form._png((16, 8), "L")), "mask-truncated": ("mask", NOISE[:-9]), "image-16-bit-ok": ("image", None),
}


@pytest.mark.parametrize("kind", sorted(FIELD_BAD))
def test_bad_fields_are_a_4xx_naming_the_field(kind):
    name, value = FIELD_BAD[kind]
    fields = {"image": PNG, "mask": MASK, "prompt": b"x"}
    if value is None:  # a 16-bit PNG: accepted, scaled to 8 bits (PIL's convert would clip it to white)
        import io

        import numpy as np
        import PIL.Image

        buf = io.BytesIO()
        PIL.Image.fromarray(np.full((8, 8), 32768, np.uint16)).save(buf, "PNG")
        job = parse_job({**fields, "image": buf.getvalue()}, max_pixels=4096, max_steps=50)
        assert set(job["source"].getdata()) == {(128, 128, 128)}
        return
    fields[name] = value
    with pytest.raises(RequestError) as info:
        parse_job(fields, max_pixels=4096, max_steps=50)
    assert 400 <= info.value.status < 500 and info.value.message.startswith(f"{name}: expected")


BAD_KINDS = ["body-truncated", "body-wrong-boundary", "body-huge-header", "body-bare-lf", "body-no-closing",
             "body-duplicate-field", "body-unknown-field", "body-non-ascii-name", "content-type-missing-boundary",
             "content-type-rfc2231-broken"] + sorted(k for k in FIELD_BAD if k != "image-16-bit-ok")
