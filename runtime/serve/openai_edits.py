"""``POST /v1/images/edits``, OpenAI's image-edit API over the same jobs as ``POST /v1/inpaint`` (docs/server.md).

The form is OpenAI's (https://platform.openai.com/docs/api-reference/images/createEdit), split by the
same hardened multipart parser as the native endpoint and checked by the same job rules
(``asymvq.pipeline.job_rules``), so a value one endpoint refuses the other refuses with the same words;
only the envelope differs: ``{"error": {"message", "type", "param", "code"}}`` here.

What is OpenAI's and what is asymvq's:
- ``mask``: a PNG whose fully transparent pixels (alpha 0) mark the area to edit, as OpenAI defines it;
  a mask without an alpha channel is refused (it would otherwise edit nothing or everything). Without a
  mask, the image's own transparent pixels are the area, as OpenAI does. ``mask_mode=white`` (an extension)
  takes the white-means-edit masks of A1111, ComfyUI and ``/v1/inpaint`` instead.
- ``size``: ``auto`` or the image's own ``WxH``; asymvq inpaints at the image's size, so another size is a
  400 rather than a silent resize.
- ``n``: 1 to the server's ``max_n``; image ``i`` uses ``seed + i``.
- ``response_format``: ``b64_json`` only; the server keeps no files to link to, so ``url`` is a 400.
- ``stream`` / ``partial_images`` (0-3): server-sent events, OpenAI's ``image_edit.partial_image`` (previews
  from a linear latent-to-RGB projection, resized to the image's size) and ``image_edit.completed`` (its
  ``usage`` all zeros: asymvq counts no tokens); ``n`` must be 1 there (the events carry no image index).
  The events are ``asymvq.serve.progress``'s.
- asymvq's own values ride as extra fields (the client's ``extra_body``): ``negative_prompt``, ``steps``,
  ``seed``, ``scheduler``, ``strength``, ``guidance``.
- ``model``, ``user``, ``safety_identifier``, ``moderation`` are accepted and not used (one model per server;
  no moderation); ``quality`` and ``background`` accept only what asymvq does (``auto``; ``opaque``).
"""
from __future__ import annotations

import base64
import io
import re
import time

import numpy as np
import PIL.Image

from ..pipeline.inpaint_run import check_same_size
from .http_form import IMAGE_FORMATS, RequestError, decode_image, job_values
from .progress import openai_schedule, preview_png, sse

OPENAI_FIELDS = ("image", "image[]", "mask", "prompt", "n", "size", "response_format", "output_format",
                 "output_compression", "stream", "partial_images", "model", "user", "safety_identifier", "moderation",
                 "quality", "background", "mask_mode",
                 # asymvq's own (OpenAI clients send them through extra_body)
                 "negative_prompt", "steps", "seed", "scheduler", "strength", "guidance")
OUTPUT_FORMATS = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}
MASK_MODES = ("alpha", "white")
_SIZE = re.compile(r"([1-9][0-9]{0,5})x([1-9][0-9]{0,5})")
_ERROR_TYPES = {500: "server_error", 503: "server_error"}


def openai_error(status: int, message: str) -> dict:
    """OpenAI's error body; ``param`` is the argument the message names (``"steps: expected ..."``), if a form field."""
    head = message.split(":", 1)[0]
    param = head if head in OPENAI_FIELDS else None
    return {"error": {"message": message, "type": _ERROR_TYPES.get(status, "invalid_request_error"), "param": param,
                      "code": None}}


def _text(fields: dict, name: str) -> str | None:
    if name not in fields:
        return None
    try:
        return fields[name].decode("utf-8").strip()
    except UnicodeDecodeError:
        raise RequestError(400, f"{name}: expected UTF-8 text, got undecodable bytes") from None


def _choice(fields: dict, name: str, allowed, default: str) -> str:
    text = _text(fields, name)
    if text is None or text == "":
        return default
    if text.lower() not in allowed:
        raise RequestError(400, f"{name}: expected one of {list(allowed)}, got {text[:40]!r}")
    return text.lower()


def _int(fields: dict, name: str, lo: int, hi: int, default: int, why: str = "") -> int:
    text = _text(fields, name)
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:
        raise RequestError(400, f"{name}: expected an integer, got {text[:40]!r}") from None
    if not lo <= value <= hi:
        raise RequestError(400, f"{name}: expected a value in [{lo}, {hi}]{why}, got {value}")
    return value


def _has_alpha(data: bytes) -> bool:
    """Whether the file carries transparency (an alpha channel or a tRNS chunk); read from its header only."""
    with PIL.Image.open(io.BytesIO(data), formats=IMAGE_FORMATS) as im:
        return im.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in im.info


def _alpha_hole(data: bytes, name: str, max_pixels: int, family: str | None) -> PIL.Image.Image:
    """The edit area of a transparent PNG: white (255) where alpha is 0, black elsewhere."""
    alpha = np.asarray(decode_image(data, name, "RGBA", max_pixels, family))[..., 3]
    return PIL.Image.fromarray(np.where(alpha == 0, 255, 0).astype(np.uint8), "L")


def parse_edit(fields: dict, *, max_pixels: int, max_steps: int, max_n: int,
               family: str | None = None) -> tuple[dict, dict]:
    """(job, options): the job as ``parse_job`` makes it for ``/v1/inpaint`` (``family``: the served pipeline's);
    options: n, output_format, output_compression, size, background, schedule (the stream's preview schedule,
    None when not streamed). Checked in the order the API reference lists the fields; the first bad one is the
    error."""
    if "image" in fields and "image[]" in fields:
        raise RequestError(400, "image: expected one image (image or image[]), got both")
    image = fields.get("image", fields.get("image[]"))
    for name, value in (("image", image), ("prompt", fields.get("prompt"))):
        if value is None:
            raise RequestError(400, f"{name}: expected a form field, got none (it is required)")
    source = decode_image(image, "image", "RGB", max_pixels, family)
    mask_mode = _choice(fields, "mask_mode", MASK_MODES, "alpha")
    if mask_mode == "white":
        if "mask" not in fields:
            raise RequestError(400, "mask: expected a form field, got none (it is required with mask_mode=white)")
        hole = decode_image(fields["mask"], "mask", "L", max_pixels, family)
    else:
        name, data = ("mask", fields["mask"]) if "mask" in fields else ("image", image)
        decode_image(data, name, "L", max_pixels, family)  # the native endpoint's checks and words first
        if not _has_alpha(data):
            raise RequestError(400, "mask: expected a PNG with an alpha channel whose fully transparent pixels mark the "
                                    "area to edit (OpenAI's mask), got one without alpha; send mask_mode=white for a "
                                    "white-means-edit mask" if name == "mask" else
                                    "mask: expected a form field (a PNG whose transparent pixels mark the area to edit) "
                                    "or an image with transparent pixels, got neither")
        hole = _alpha_hole(data, name, max_pixels, family)
    try:
        check_same_size(source, hole, "mask")
    except ValueError as exc:
        raise RequestError(400, str(exc)) from None
    n = _int(fields, "n", 1, max_n, 1, " (the server's max_n)")
    size = _text(fields, "size") or "auto"
    want = f"{source.width}x{source.height}"
    if size != "auto":
        if not _SIZE.fullmatch(size):
            raise RequestError(400, f"size: expected auto or WxH (e.g. {want}), got {size[:40]!r}")
        if size != want:
            raise RequestError(400, f"size: expected auto or the image's own size {want} (asymvq edits at the image's "
                                    f"size; resize the image instead), got {size}")
    if _choice(fields, "response_format", ("b64_json", "url"), "b64_json") == "url":
        raise RequestError(400, "response_format: expected b64_json, got 'url' (this server keeps no files to link to)")
    output_format = _choice(fields, "output_format", OUTPUT_FORMATS, "png")
    compression = _int(fields, "output_compression", 0, 100, 100)
    schedule = openai_schedule(fields, n)
    _choice(fields, "quality", ("auto",), "auto")
    background = _choice(fields, "background", ("auto", "opaque"), "auto")
    job = dict(source=source, hole=hole, **job_values(fields, max_steps=max_steps, family=family))
    return job, {"n": n, "output_format": output_format, "output_compression": compression, "size": want,
                 "background": background, "schedule": schedule}


def encode(png: bytes, output_format: str, compression: int) -> str:
    """The job's PNG as base64 ``output_format``; ``output_compression`` is OpenAI's 0-100 (100: least compressed)."""
    if output_format == "png":
        data = png
    else:
        buf = io.BytesIO()
        with PIL.Image.open(io.BytesIO(png)) as im:
            im.convert("RGB").save(buf, format=OUTPUT_FORMATS[output_format], quality=max(1, compression))
        data = buf.getvalue()
    return base64.b64encode(data).decode("ascii")


class OpenAIEvents:
    """OpenAI's image edit stream: ``image_edit.partial_image`` (the previews, at the image's size) and
    ``image_edit.completed``; a failure is ``error`` with OpenAI's error body (the official client raises it)."""

    def __init__(self, observed, opts: dict, error_body):
        self.observed, self.opts, self.error_body = observed, opts, error_body
        self.background = opts["background"]
        self.partials = 0
        width, height = opts["size"].split("x")
        self.size = (int(width), int(height))

    def _common(self) -> dict:
        return {"created_at": int(time.time()), "size": self.opts["size"], "quality": "auto",
                "background": self.background, "output_format": self.opts["output_format"]}

    def _b64(self, png: bytes) -> str:
        return encode(png, self.opts["output_format"], self.opts["output_compression"])

    def step(self, event: dict, base: dict) -> list[bytes]:
        if "preview" not in event:
            return []  # OpenAI's stream has no per-step event; the job id is in the X-Asymvq-Job-Id header
        data = {"type": "image_edit.partial_image", "b64_json": self._b64(preview_png(event["preview"], self.size)),
                **self._common(), "partial_image_index": self.partials}
        self.partials += 1
        return [sse("image_edit.partial_image", data)]

    def result(self, results: list, base: dict) -> bytes:
        r = results[0]
        self.observed(r)
        # usage: OpenAI's event requires it; asymvq counts no tokens (no billing), so every count is 0
        usage = {"input_tokens": 0, "input_tokens_details": {"image_tokens": 0, "text_tokens": 0}, "output_tokens": 0,
                 "total_tokens": 0}
        return sse("image_edit.completed", {"type": "image_edit.completed", "b64_json": self._b64(r.png),
                                            **self._common(), "usage": usage})

    def error(self, status: int, message: str, base: dict) -> bytes:
        return sse("error", self.error_body(status, message))
