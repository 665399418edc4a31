"""Progress and previews of a running job, streamed as server-sent events (``stream=true``; docs/server.md).

From the step loop to the client:
1. the back end's compute thread turns each ``asymvq.pipeline.steps.Step`` into plain event dicts (``step_events``:
   step, total and, on the steps the job's ``preview`` schedule picks, a uint8 preview from the latent space's
   linear ``RGBProjection``: no decoder run). The single-process runner does it in its worker thread; on Ray the
   denoise stage does and the events travel back through its streaming handle.
2. ``JobStream`` (a Starlette streaming response) carries them across to the event loop, stamps the job id and the
   milliseconds since the request arrived, and writes them in the endpoint's words (``NativeEvents``:
   ``progress``, ``preview``, ``result``, ``error``; ``asymvq.serve.openai_edits.OpenAIEvents``: OpenAI's
   ``image_edit.partial_image`` and ``image_edit.completed``), then the result, or an ``error`` event in the
   endpoint's error shape when the job fails after the 200 went out (before that: the endpoint's plain 4xx/5xx).
3. The request keeps its place in the queue until its job has stopped: a client that disconnects mid-stream
   cancels the job, which stops at its next step boundary, and only then is its place freed.
"""
from __future__ import annotations

import asyncio
import base64
import io
import json

import numpy as np
import PIL.Image
import torch
from starlette.responses import StreamingResponse

from ..models.latent_space import rgb_projection
from .http_form import RequestError

PREVIEW_EVERY = 5  # the native endpoint's default: a preview every 5 steps (preview_every=0: none)
MAX_PARTIAL_IMAGES = 3  # OpenAI's bound on partial_images
STREAM_FIELDS = ("stream", "preview_every")  # the native endpoint's streaming fields
_TRUE, _FALSE = ("true", "1"), ("false", "0", "")


# -- the request's fields ---------------------------------------------------------------------
def parse_stream_flag(fields: dict) -> bool:
    raw = fields.get("stream")
    text = raw.decode("utf-8", "replace").strip().lower() if raw is not None else ""
    if text not in _TRUE + _FALSE:
        raise RequestError(400, f"stream: expected one of ['false', 'true', '0', '1'], got {text[:40]!r}")
    return text in _TRUE


def _count(fields: dict, name: str, hi: int, default: int) -> int:
    raw = fields.get(name)
    if raw is None:
        return default
    text = raw.decode("utf-8", "replace").strip()
    try:
        value = int(text)
    except ValueError:
        raise RequestError(400, f"{name}: expected an integer, got {text[:40]!r}") from None
    if not 0 <= value <= hi:
        raise RequestError(400, f"{name}: expected a value in [0, {hi}], got {value}")
    return value


def native_schedule(fields: dict, max_steps: int) -> tuple | None:
    """``/v1/inpaint``'s ``stream`` and ``preview_every``: the job's preview schedule, or None when not streamed."""
    if not parse_stream_flag(fields):
        if "preview_every" in fields:
            raise RequestError(400, "preview_every: expected only with stream=true, got it without")
        return None
    return ("every", _count(fields, "preview_every", max_steps, PREVIEW_EVERY))


def openai_schedule(fields: dict, n: int) -> tuple | None:
    """``/v1/images/edits``' ``stream`` and ``partial_images`` (OpenAI's 0-3): the schedule, or None."""
    partial = _count(fields, "partial_images", MAX_PARTIAL_IMAGES, 0)
    if not parse_stream_flag(fields):
        if partial:
            raise RequestError(400, f"partial_images: expected 0 without stream=true, got {partial}")
        return None
    if n != 1:  # OpenAI's events carry no image index: one image per stream
        raise RequestError(400, f"n: expected 1 with stream=true (one image per stream), got {n}")
    return ("count", partial)


def preview_wanted(schedule, index: int, total: int) -> bool:
    """Whether step ``index`` (1-based) of ``total`` gets a preview: every k-th step (``("every", k)``, k = 0:
    none), or ``("count", p)``: p previews spread evenly over the run. Never the last step: the result follows it."""
    if schedule is None or index >= total:
        return False
    kind, k = schedule
    if kind == "every":
        return k > 0 and index % k == 0
    return index in {round(total * (j + 1) / (k + 1)) for j in range(k)}


# -- in the compute thread ----------------------------------------------------------------------
def step_events(step, schedules: list, latent_space) -> list[dict | None]:
    """One event per row of the step's batch (None for a row whose job streams nothing): ``step``, ``total`` and,
    where its schedule says, ``preview``: (h, w, 3) uint8 at latent resolution."""
    out: list[dict | None] = []
    projection = None
    for row, schedule in enumerate(schedules):
        if schedule is None:
            out.append(None)
            continue
        event = {"step": step.index, "total": step.total}
        if preview_wanted(schedule, step.index, step.total):
            projection = projection or rgb_projection(latent_space)
            if projection is not None and step.estimate.shape[1] == projection.channels:
                rgb = projection.apply(step.estimate[row:row + 1])[0]
                event["preview"] = ((rgb.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(
                    1, 2, 0).cpu().numpy()
        out.append(event)
    return out


def job_on_step(on_step, schedule, latent_space):
    """The pipeline's ``on_step`` for one job (batch of 1) that hands its events to ``on_step(event)``."""
    if on_step is None or schedule is None:
        return None

    def report(step):
        event = step_events(step, [schedule], latent_space)[0]
        on_step(event)

    return report


# -- the events, in each endpoint's words ----------------------------------------------------------
def sse(event: str, data: dict) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


def preview_png(pixels: np.ndarray, size: tuple[int, int] | None = None) -> bytes:
    image = PIL.Image.fromarray(pixels, "RGB")
    if size is not None and image.size != size:
        image = image.resize(size, PIL.Image.BILINEAR)
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=1)  # a preview: speed over size
    return buf.getvalue()


class NativeEvents:
    """``/v1/inpaint``'s events: ``progress`` each step, ``preview`` on the schedule's steps, ``result``, ``error``."""

    def __init__(self, observed):
        self.observed = observed  # JobResult -> the plain answer's headers (and /metrics)

    def step(self, event: dict, base: dict) -> list[bytes]:
        out = [sse("progress", {**base, "step": event["step"], "total": event["total"]})]
        if "preview" in event:
            pixels = event["preview"]
            out.append(sse("preview", {**base, "step": event["step"], "total": event["total"], "width": pixels.shape[1],
                                       "height": pixels.shape[0],
                                       "image": base64.b64encode(preview_png(pixels)).decode("ascii")}))
        return out

    def result(self, results: list, base: dict) -> bytes:
        r = results[0]
        headers = self.observed(r)
        return sse("result", {**base, "image": base64.b64encode(r.png).decode("ascii"), "pre_error": r.pre_error,
                              "latency_ms": round(r.total_ms, 1), "server_timing": headers["Server-Timing"]})

    def error(self, status: int, message: str, base: dict) -> bytes:
        return sse("error", {"error": message, "status": status, **base})


# -- the response ---------------------------------------------------------------------------------
class StreamRequest:
    """What a route's handler returns to stream its job: ``run(on_step)`` (awaitable: the job's ``JobResult``
    list) and the endpoint's events (``NativeEvents`` / ``OpenAIEvents``); ``asymvq.serve.server`` makes it a
    ``JobStream`` bound to the request's ticket and place in the queue."""

    def __init__(self, run, events):
        self.run, self.events = run, events


class JobStream(StreamingResponse):
    """The job's events as ``text/event-stream``. ``run(on_step)`` starts the job (``on_step(event)`` from any
    thread) and returns its ``JobResult`` list; ``failure(exc)`` -> (status, message) in the endpoint's terms;
    ``release()`` frees the request's place once the job has stopped, however the stream ended."""

    media_type = "text/event-stream"

    def __init__(self, run, events, *, ticket, arrived: float, failure, release, headers: dict | None = None):
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue = asyncio.Queue()
        self.events, self.ticket, self.arrived, self.failure, self.release = events, ticket, arrived, failure, release
        self.answered = False  # whether the job's failure went out as an error event (and into the log)
        self.streaming = False  # whether the stream is being written (it then reports the job's failure)
        self.task = asyncio.ensure_future(run(self._on_step))
        # the place is freed when the job stops, however the stream ends, even one the server never starts writing
        self.task.add_done_callback(self._finished)
        super().__init__(self._body(), headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no",
                                                **(headers or {})})

    def _on_step(self, event: dict | None) -> None:
        if event is not None:
            if self.loop is _running_loop():
                self.queue.put_nowait(event)
            else:
                self.loop.call_soon_threadsafe(self.queue.put_nowait, event)

    def _base(self) -> dict:
        return {"job_id": self.ticket.id, "elapsed_ms": round((self.loop.time() - self.arrived) * 1e3, 1)}

    async def _body(self):
        getter = None
        try:
            while True:
                getter = asyncio.ensure_future(self.queue.get())
                await asyncio.wait({self.task, getter}, return_when=asyncio.FIRST_COMPLETED)
                if not getter.done():
                    getter.cancel()
                    break
                for chunk in self.events.step(getter.result(), self._base()):
                    yield chunk
            # the job is done; the events it queued before it returned are all here (FIFO from its thread)
            while not self.queue.empty():
                for chunk in self.events.step(self.queue.get_nowait(), self._base()):
                    yield chunk
            try:
                results = self.task.result()
            except Exception as exc:  # noqa: BLE001 - answered as the endpoint's error event
                self.answered = True
                status, message = self.failure(exc)
                yield self.events.error(status, message, self._base())
                return
            yield self.events.result(results, self._base())
        finally:
            if getter is not None and not getter.done():
                getter.cancel()

    async def __call__(self, scope, receive, send):
        self.streaming = True
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.streaming = False
            if not self.task.done():  # the client left mid-stream: stop the job at its next step
                self.ticket.cancel("client closed the connection")
            else:
                self._log_unanswered()

    def _finished(self, task) -> None:
        self.release()
        if not self.streaming:
            self._log_unanswered()

    def _log_unanswered(self) -> None:
        """A failure no error event reported (the stream was gone): logged as a plain answer's failure is."""
        task = self.task
        if not self.answered and not task.cancelled() and task.exception() is not None:
            self.answered = True
            self.failure(task.exception())


def _running_loop():
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None
