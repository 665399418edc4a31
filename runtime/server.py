"""HTTP server for SD inpainting: ``POST /v1/inpaint`` and ``GET /healthz`` (docs/server.md).

``create_app(pipeline)`` returns a FastAPI app around one ``InpaintPipeline``. Concurrency:
one request at a time goes through the pipeline, behind a lock. Torch pipelines are not
re-entrant (and each request swaps the pipeline's timer and scheduler for its own), so the
lock is the contract, not an optimisation; requests queue for it in worker threads while the
event loop keeps answering ``/healthz``, and past ``max_queue`` waiting requests the server
answers 503 at once rather than holding connections for minutes. Run one process per GPU.

Bad input never reaches the GPU: the form is parsed and checked first, and every error a
client can fix is a 4xx ``{"error": "<argument>: expected ..., got ..."}``, the same words
the pipeline's own ValueErrors use. Anything else is a 500 ``{"error": ...}`` with the
traceback in the server log only. The multipart body is read under ``max_body_bytes`` and
split here, with the standard library's header parser, rather than through Starlette's
``request.form()`` (python-multipart): tried with starlette 1.10 / python-multipart 0.0.34,
that path returns an empty form for a truncated body instead of an error, and its
``max_part_size`` does not bound file parts, so the size cap would be needed here anyway.
"""
from __future__ import annotations

import io
import logging
import math
import threading
import time
from email.parser import BytesHeaderParser
from email.utils import collapse_rfc2231_value

import PIL.Image
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from .inpaint_run import check_same_size, run_inpaint
from .pipeline import SCHEDULER_ALIASES, SCHEDULERS, InpaintPipeline, make_scheduler
from .presets import DTYPES
from .timing import StageTimer

log = logging.getLogger("asymvq.server")

IMAGE_FORMATS = ("PNG", "JPEG")  # only these decoders face the network: less attack surface than all of PIL's
FIELDS = ("image", "mask", "prompt", "negative_prompt", "steps", "guidance", "seed", "strength", "scheduler")


class RequestError(Exception):
    """A client error: HTTP status and the one-line message the client sees."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


def _error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


# -- the request body -------------------------------------------------------------------------
async def _read_body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 as soon as it passes ``limit`` (Content-Length can lie or be absent)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise RequestError(413, f"body: expected at most {limit} bytes, got {int(declared)}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestError(413, f"body: expected at most {limit} bytes, got more")
        chunks.append(chunk)
    return b"".join(chunks)


def parse_form(body: bytes, content_type: str) -> dict[str, bytes]:
    """multipart/form-data -> {field name: raw bytes}; unknown or repeated fields are errors, not ignored."""
    header = BytesHeaderParser().parsebytes(b"Content-Type: " + content_type.encode("latin-1", "replace") + b"\r\n\r\n")
    if header.get_content_type() != "multipart/form-data" or not header.get_param("boundary"):
        raise RequestError(415, "Content-Type: expected multipart/form-data with a boundary "
                                f"(curl -F), got {content_type or 'none'!r}")
    delim = b"--" + collapse_rfc2231_value(header.get_param("boundary")).encode("latin-1")
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
        name = part.get_param("name", header="content-disposition")
        name = collapse_rfc2231_value(name) if name else None
        if not name:
            raise RequestError(400, "body: expected every part to have Content-Disposition: form-data; name=...")
        if name not in FIELDS:
            raise RequestError(400, f"{name}: expected a field among {list(FIELDS)}, got an unknown field")
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


def _number(fields: dict, name: str, kind, default, lo, hi):
    text = _text(fields, name)
    if text is None:
        return default
    try:
        value = kind(text.strip())
    except ValueError:
        raise RequestError(400, f"{name}: expected {'an integer' if kind is int else 'a number'}, got {text[:40]!r}") from None
    if not math.isfinite(value) or not lo <= value <= hi:
        raise RequestError(400, f"{name}: expected a value in [{lo}, {hi}], got {text[:40]!r}")
    return value


def decode_image(data: bytes | None, name: str, mode: str, max_pixels: int) -> PIL.Image.Image:
    """PNG/JPEG bytes -> PIL in ``mode``; the size is checked from the header, before any pixel is decoded."""
    if not data:
        raise RequestError(400, f"{name}: expected a PNG or JPEG file, got {'none (it is required)' if data is None else 'an empty file'}")
    try:
        with PIL.Image.open(io.BytesIO(data), formats=IMAGE_FORMATS) as im:
            w, h = im.size
            if w * h > max_pixels:
                raise RequestError(413, f"{name}: expected at most {max_pixels} pixels, got {w}x{h} (WxH) = {w * h}")
            if w % 8 or h % 8:
                # the pipeline would round down and resize: a silently different image, so refuse
                raise RequestError(400, f"{name}: expected width and height multiples of 8, got {w}x{h} (WxH)")
            return im.convert(mode)
    except PIL.UnidentifiedImageError:
        raise RequestError(400, f"{name}: expected a PNG or JPEG file, got {len(data)} bytes PIL cannot read as either") from None
    except PIL.Image.DecompressionBombError:
        raise RequestError(413, f"{name}: expected at most {max_pixels} pixels, got a decompression bomb") from None
    except (OSError, SyntaxError, ValueError) as exc:  # truncated or corrupt data: PIL's decoders raise these
        raise RequestError(400, f"{name}: expected a complete PNG or JPEG file, got a damaged one ({exc})") from None


def parse_job(fields: dict, *, max_pixels: int, max_steps: int) -> dict:
    """Every argument checked, in the order a client reads the form; the first bad one is the error."""
    for name in ("image", "mask", "prompt"):
        if name not in fields:
            raise RequestError(400, f"{name}: expected a form field, got none (it is required)")
    source = decode_image(fields["image"], "image", "RGB", max_pixels)
    hole = decode_image(fields["mask"], "mask", "L", max_pixels)
    try:
        check_same_size(source, hole, "mask")
    except ValueError as exc:
        raise RequestError(400, str(exc)) from None
    scheduler = _text(fields, "scheduler")
    if scheduler is not None:
        key = SCHEDULER_ALIASES.get(scheduler.lower(), scheduler.lower())
        if key not in SCHEDULERS:
            raise RequestError(400, f"scheduler: expected one of {list(SCHEDULERS)}, got {scheduler[:40]!r}")
        scheduler = key
    return dict(
        source=source, hole=hole, prompt=_text(fields, "prompt", ...),
        negative_prompt=_text(fields, "negative_prompt"),
        steps=_number(fields, "steps", int, 50, 1, max_steps),
        guidance=_number(fields, "guidance", float, 7.5, 0.0, 50.0),
        seed=_number(fields, "seed", int, 0, 0, 2**63 - 1),
        # (0, 1] is the pipeline's own check (one wording for every caller); here only finiteness
        strength=_number(fields, "strength", float, 1.0, -math.inf, math.inf),
        scheduler=scheduler,
    )


# -- the app --------------------------------------------------------------------------------
class _Runner:
    """The pipeline behind its lock; each run gets its own timer and, if asked, its own scheduler."""

    def __init__(self, pipe):
        self.pipe = pipe
        self.lock = threading.Lock()
        self.waiting = 0  # touched only on the event loop's thread

    def run(self, job: dict):
        with self.lock:
            pipe = self.pipe
            saved_timer, saved_scheduler = pipe.timer, pipe.scheduler
            timer = StageTimer(pipe.spec.device)
            try:
                pipe.timer = timer
                if job["scheduler"] is not None:
                    pipe.scheduler = make_scheduler(job["scheduler"], saved_scheduler.config)
                t0 = time.perf_counter()
                result = run_inpaint(pipe, job["source"], job["hole"], job["prompt"],
                                     negative_prompt=job["negative_prompt"], steps=job["steps"],
                                     guidance=job["guidance"], strength=job["strength"], seed=job["seed"])
                total_ms = (time.perf_counter() - t0) * 1e3
            finally:
                pipe.timer, pipe.scheduler = saved_timer, saved_scheduler
            stages: dict[str, float] = {}
            for name, ms in timer.collect():
                stages[name] = stages.get(name, 0.0) + ms
        buf = io.BytesIO()
        result.images[0].save(buf, format="PNG")
        return buf.getvalue(), result.pre_error, total_ms, stages


def create_app(pipeline, *, max_pixels: int = 1024 * 1024, max_steps: int = 150, max_body_bytes: int = 32 << 20,
               max_queue: int = 8, source: str | None = None) -> FastAPI:
    """A FastAPI app serving ``pipeline`` (an ``InpaintPipeline``, or a no-argument callable that builds one,
    called here so a bad model fails before the port opens). ``source`` is what ``/healthz`` reports."""
    pipe = pipeline if isinstance(pipeline, InpaintPipeline) else pipeline()
    if not isinstance(pipe, InpaintPipeline):
        raise ValueError(f"pipeline: expected an InpaintPipeline or a callable returning one, got {type(pipe).__name__}")
    if not pipe.spec.inpainting:
        raise ValueError("pipeline: expected an inpainting pipeline (9-channel UNet), got a text-to-image one")
    for name, value in (("max_pixels", max_pixels), ("max_steps", max_steps), ("max_body_bytes", max_body_bytes)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}: expected a positive integer, got {value!r}")
    runner = _Runner(pipe)
    dtype_name = {v: k for k, v in DTYPES.items()}.get(pipe.spec.dtype, str(pipe.spec.dtype))
    health = {"status": "ok", "source": source or "pipeline", "device": str(pipe.spec.device), "dtype": dtype_name,
              "decoders": sorted(pipe.stages.decoders()), "scheduler": type(pipe.scheduler).__name__,
              "max_pixels": max_pixels, "max_steps": max_steps}

    app = FastAPI(title="asymvq", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.runner = runner

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        # 404/405 in the same {"error": ...} shape as everything else
        return _error(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}")

    @app.get("/healthz")
    async def healthz():
        return health

    @app.post("/v1/inpaint")
    async def inpaint(request: Request):
        try:
            if runner.waiting > max_queue:
                return _error(503, f"server: expected at most {max_queue} queued requests, got more; retry later",
                              headers={"Retry-After": "1"})
            body = await _read_body(request, max_body_bytes)
            job = parse_job(parse_form(body, request.headers.get("content-type", "")),
                            max_pixels=max_pixels, max_steps=max_steps)
            runner.waiting += 1
            try:
                png, pre_error, total_ms, stages = await run_in_threadpool(runner.run, job)
            finally:
                runner.waiting -= 1
        except RequestError as exc:
            return _error(exc.status, exc.message)
        except ValueError as exc:  # the pipeline's own argument checks: the client's to fix
            return _error(400, " ".join(str(exc).split()))
        except Exception:  # noqa: BLE001 - the server keeps serving; the traceback goes to the log only
            log.exception("inpaint request failed")
            return _error(500, "internal error while inpainting (details in the server log)")
        headers = {
            "X-Asymvq-Latency-ms": f"{total_ms:.1f}",
            "X-Asymvq-Pre-Error": f"{pre_error:.4f}",
            "Server-Timing": ", ".join(f"{name};dur={ms:.1f}" for name, ms in stages.items()),
        }
        return Response(png, media_type="image/png", headers=headers)

    return app
