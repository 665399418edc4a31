"""The inpainting request form: multipart/form-data split and every field checked.

Shared by every HTTP front end (``asymvq serve`` and the Ray Serve ingress), so that all of
them accept the same fields and refuse bad input with the same status and words, before any
model work. Needs only the standard library and PIL: the fuzzers drive it directly.

The multipart body is split here, with the standard library's header parser, rather than
through Starlette's ``request.form()`` (python-multipart): tried with starlette 1.10 /
python-multipart 0.0.34, that path returns an empty form for a truncated body instead of an
error, and its ``max_part_size`` does not bound file parts, so a size cap would be needed here
anyway.
"""
from __future__ import annotations

import io
import re
from email.parser import BytesHeaderParser
from email.utils import collapse_rfc2231_value

import PIL.Image

from ..pipeline.images import pil_convert
from ..pipeline.inpaint_run import check_same_size
from ..pipeline.job_rules import PROMPT_MAX_BYTES, check_image_size, check_job

IMAGE_FORMATS = ("PNG", "JPEG")  # only these decoders face the network: less attack surface than all of PIL's
_BOUNDARY = re.compile(r"[0-9A-Za-z'()+_,\-./:=? ]{0,69}[0-9A-Za-z'()+_,\-./:=?]")  # RFC 2046 bchars
FIELDS = ("image", "mask", "prompt", "negative_prompt", "steps", "guidance", "seed", "strength", "scheduler")


class RequestError(Exception):
    """A client error: HTTP status and the one-line message the client sees."""

    def __init__(self, status: int, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers


def _param(header, param: str, field: str, where: str) -> str | None:
    """A header parameter, RFC 2231 forms decoded. The standard library raises TypeError or ValueError
    on some malformed RFC 2231 parameters (name*0*/name*1 mixes, NUL or unknown charsets; found by
    tests/fuzz/fuzz_form.py): a client error here, not a server one."""
    try:
        value = header.get_param(param, header=field)
        return collapse_rfc2231_value(value) if value else None
    except (TypeError, ValueError, LookupError, IndexError, AttributeError) as exc:
        raise RequestError(400, f"{where}: expected a well-formed {param}= parameter, got one Python's "
                                f"email parser cannot read ({type(exc).__name__})") from None


def parse_form(body: bytes, content_type: str, allowed: tuple[str, ...] = FIELDS) -> dict[str, bytes]:
    """multipart/form-data -> {field name: raw bytes}; fields not in ``allowed`` (the endpoint's) or repeated
    ones are errors, not ignored."""
    header = BytesHeaderParser().parsebytes(b"Content-Type: " + content_type.encode("latin-1", "replace") + b"\r\n\r\n")
    boundary = _param(header, "boundary", "content-type", "Content-Type")
    if header.get_content_type() != "multipart/form-data" or not boundary:
        raise RequestError(415, "Content-Type: expected multipart/form-data with a boundary "
                                f"(curl -F), got {content_type[:200] or 'none'!r}")
    if not isinstance(boundary, str) or not _BOUNDARY.fullmatch(boundary):
        raise RequestError(400, "Content-Type: expected a boundary of 1 to 70 letters, digits or '()+_,-./:=? "
                                f"(RFC 2046), got {str(boundary)[:80]!r}")
    delim = b"--" + boundary.encode("ascii")
    start = body.find(delim)
    if start < 0:
        raise RequestError(400, "body: expected multipart/form-data parts, got no boundary line")
    fields: dict[str, bytes] = {}
    pos = start + len(delim)
    while not body.startswith(b"--", pos):  # "--" after a delimiter closes the body
        end = body.find(b"\r\n" + delim, pos)
        head, sep, data = body[pos:end].partition(b"\r\n\r\n")
        if end < 0 or not body.startswith(b"\r\n", pos) or not sep:
            raise RequestError(400, "body: expected complete multipart/form-data parts, got a truncated or malformed one")
        part = BytesHeaderParser().parsebytes(head[2:] + b"\r\n\r\n")
        name = _param(part, "name", "content-disposition", "body: a part's Content-Disposition")
        if not name:
            raise RequestError(400, "body: expected every part to have Content-Disposition: form-data; name=...")
        if name not in allowed:  # the client's name, shown so that the message stays one printable line
            shown = name if name.isprintable() and len(name) <= 40 else repr(name[:40])
            raise RequestError(400, f"{shown}: expected a field among {list(allowed)}, got an unknown field")
        if name in fields:
            raise RequestError(400, f"{name}: expected once, got it twice")
        fields[name] = data
        pos = end + 2 + len(delim)
    return fields


# -- the fields -----------------------------------------------------------------------------
def _text(fields: dict, name: str, default=None) -> str | None:
    if name not in fields:
        if default is ...:
            raise RequestError(400, f"{name}: expected a form field, got none (it is required)")
        return default
    try:
        return fields[name].decode("utf-8")
    except UnicodeDecodeError:
        raise RequestError(400, f"{name}: expected UTF-8 text, got undecodable bytes") from None


def _number(fields: dict, name: str, kind, default):
    """The field's text as ``kind``; its range is ``asymvq.pipeline.job_rules``' to judge."""
    text = _text(fields, name)
    if text is None:
        return default
    try:
        return kind(text.strip())
    except ValueError:
        raise RequestError(400, f"{name}: expected {'an integer' if kind is int else 'a number'}, got {text[:40]!r}") from None


def decode_image(data: bytes | None, name: str, mode: str, max_pixels: int, family: str | None = None) -> PIL.Image.Image:
    """PNG/JPEG bytes -> PIL in ``mode``; the size is checked from the header, before any pixel is decoded
    (multiples of the pipeline ``family``'s factor: ``asymvq.pipeline.family_rules``)."""
    if not data:
        raise RequestError(400, f"{name}: expected a PNG or JPEG file, got {'none (it is required)' if data is None else 'an empty file'}")
    try:
        with PIL.Image.open(io.BytesIO(data), formats=IMAGE_FORMATS) as im:
            w, h = im.size
            if w * h > max_pixels:
                raise RequestError(413, f"{name}: expected at most {max_pixels} pixels, got {w}x{h} (WxH) = {w * h}")
            try:  # the pipeline would round down and resize: a silently different image, so refuse
                check_image_size(w, h, name, family)
            except ValueError as exc:
                raise RequestError(400, str(exc)) from None
            im.load()  # decoding errors first, answered below
            try:
                return pil_convert(im, mode, name)  # upright (EXIF), 16-bit scaled rather than clipped
            except ValueError as exc:
                raise RequestError(400, str(exc)) from None
    except PIL.UnidentifiedImageError:
        raise RequestError(400, f"{name}: expected a PNG or JPEG file, got {len(data)} bytes PIL cannot read as either") from None
    except PIL.Image.DecompressionBombError:
        raise RequestError(413, f"{name}: expected at most {max_pixels} pixels, got a decompression bomb") from None
    except (OSError, SyntaxError, ValueError) as exc:  # truncated or corrupt data: PIL's decoders raise these
        raise RequestError(400, f"{name}: expected a complete PNG or JPEG file, got a damaged one ({exc})") from None


def parse_job(fields: dict, *, max_pixels: int, max_steps: int, family: str | None = None) -> dict:
    """Every argument checked, in the order a client reads the form; the first bad one is the error.
    The values' rules are ``asymvq.pipeline.job_rules.check_job``, the CLI's too: a job this returns cannot fail
    the pipeline's own argument checks, so nothing bad waits in the queue. ``family``: the served pipeline's
    (``asymvq.pipeline.family_rules``; default SD's)."""
    for name in ("image", "mask", "prompt"):
        if name not in fields:
            raise RequestError(400, f"{name}: expected a form field, got none (it is required)")
    source = decode_image(fields["image"], "image", "RGB", max_pixels, family)
    hole = decode_image(fields["mask"], "mask", "L", max_pixels, family)
    try:
        check_same_size(source, hole, "mask")
    except ValueError as exc:
        raise RequestError(400, str(exc)) from None
    return dict(source=source, hole=hole, **job_values(fields, max_steps=max_steps, family=family))


def job_values(fields: dict, *, max_steps: int, family: str | None = None) -> dict:
    """The job's values (prompt, steps, ...) from the form, by ``check_job``: every endpoint's one set of rules."""
    if any(len(fields.get(name) or b"") > PROMPT_MAX_BYTES for name in ("prompt", "negative_prompt")):
        name = "prompt" if len(fields["prompt"]) > PROMPT_MAX_BYTES else "negative_prompt"
        # refused from the raw size, before decoding megabytes of text
        raise RequestError(400, f"{name}: expected at most {PROMPT_MAX_BYTES} bytes of UTF-8 text (CLIP reads 77 "
                                f"tokens), got {len(fields[name])}")
    try:
        values = check_job(prompt=_text(fields, "prompt", ...), negative_prompt=_text(fields, "negative_prompt"),
                           steps=_number(fields, "steps", int, 50), guidance=_number(fields, "guidance", float, None),
                           seed=_number(fields, "seed", int, 0), strength=_number(fields, "strength", float, 1.0),
                           scheduler=_text(fields, "scheduler"), max_steps=max_steps, family=family)
    except ValueError as exc:
        raise RequestError(400, str(exc)) from None
    return values
