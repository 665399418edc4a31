"""HTTP server for inpainting (any family: SD 1.x, SDXL, FLUX.1 Fill): ``POST /v1/inpaint``, OpenAI's ``POST /v1/images/edits``
(``asymvq.serve.openai_edits``), ``GET/DELETE /v1/jobs``, ``/healthz`` (= ``/readyz``), ``/livez``,
``/metrics``, ``/openapi.json`` and ``/docs`` (docs/server.md).

``create_app(pipeline)`` returns a FastAPI app around one pipeline (an ``InpaintPipeline`` or an SDXL /
FLUX.1 Fill one: ``pipe.rules`` says what its jobs may ask, and the form is checked by them). Concurrency:
one request at a time goes through the pipeline, behind a lock. Each request passes its own
timer and scheduler to the call (the pipeline's attributes are never touched), but one torch
model run at a time per device is what keeps latency predictable, so the lock stays; requests queue for it in worker threads while the
event loop keeps answering ``/healthz``, and past ``max_queue`` waiting requests the server
answers 503 at once rather than holding connections for minutes. Run one process per GPU.

Bad input never reaches the GPU: the form is parsed and checked first (``asymvq.serve.http_form``),
and every error a client can fix is a 4xx ``{"error": "<argument>: expected ..., got ..."}``,
the same words the pipeline's own ValueErrors use. Anything else is a 500 ``{"error": ...}``
with the traceback in the server log only. The body is read under ``max_body_bytes``. On
``/v1/images/`` paths the same statuses and words come in OpenAI's error shape.

Every job request has an id (``asymvq.serve.jobs``); a client's disconnect, ``DELETE /v1/jobs/{id}`` or the
request's deadline stops its job at the next denoising step and frees its place.

``build_app(run_job, ...)`` is that HTTP surface (routes, limits, errors, headers, ``GET /metrics``)
around any back end: ``create_app``'s runner here, the Ray Serve ingress in ``asymvq.serve.ray_serve``.
"""
from __future__ import annotations

import asyncio
import io
import logging
import threading
import time
from dataclasses import dataclass, field

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from .. import __version__
from ..models.devices import dtype_name
from ..models.region import check_region_options
from ..pipeline.checks import check_int
from ..pipeline.decode_modes import NOTE_REGION, check_decode_options, modes_engine
from ..pipeline.family_base import FamilyBase
from ..pipeline.family_rules import SD
from ..pipeline.inpaint_pipeline import InpaintPipeline, JobCancelled
from ..pipeline.inpaint_run import run_inpaint
from ..pipeline.job_rules import SEED_MAX
from ..pipeline.source import PipelineSource
from ..profiling.timing import StageTimer
from .drain import DRAINING, Drain
from .http_form import FIELDS, RequestError, parse_form, parse_job
from .jobs import DEADLINE, JOB_HEADER, TIMEOUT_HEADER, Jobs, request_timeout, watch_disconnect
from .limits import (
    BODY_TIMEOUT_S,
    CLIENT_CLOSED,
    DRAIN_RETRY_AFTER_S,
    MAX_BODY_BYTES,
    MAX_HEADER_BYTES,
    MAX_N,
    MAX_QUEUE,
    REQUEST_TIMEOUT_S,
    SHUTDOWN_TIMEOUT_S,
)
from .metrics import ServerMetrics
from .openai_edits import OPENAI_FIELDS, OpenAIEvents, encode, openai_error, parse_edit
from .progress import STREAM_FIELDS, JobStream, NativeEvents, StreamRequest, job_on_step, native_schedule
from .schema import (
    NATIVE_EVENTS,
    OPENAI_EVENTS,
    EditForm,
    ImagesResponse,
    InpaintForm,
    JobCancelledBody,
    NativeError,
    OpenAIError,
    error_responses,
    form_schema,
    stream_content,
)

REGION_HEADER = "X-Asymvq-Decode-Region"  # what a job's region decode took and its statistics (RegionChoice.describe())

log = logging.getLogger("asymvq.serve.server")
LOCK_POLL_S = 0.02  # how often a job waiting for the pipeline looks whether it was cancelled
ENDPOINTS = ("/v1/inpaint", "/v1/images/edits")  # the job endpoints: counted in /metrics' requests


def region_headers(timer) -> dict[str, str]:
    """``REGION_HEADER`` with what the decode ``timer`` saw took (the box, or why the whole image); {} without a region
    (both servers: the single-process runner and the Ray decode stage)."""
    choice = timer.notes.get(NOTE_REGION)
    return {REGION_HEADER: choice.describe()} if choice is not None else {}


def _error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _openai_error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse(openai_error(status, message), status_code=status, headers=headers)


def _error_for(path: str):
    """The error shape of the endpoint at ``path``: OpenAI's under /v1/images/, asymvq's elsewhere."""
    return _openai_error if path.startswith("/v1/images/") else _error


# -- the request body -------------------------------------------------------------------------
async def _read_body(request: Request, limit: int, timeout_s: float, cancel: threading.Event) -> bytes:
    """The body, refused with 413 as soon as it passes ``limit`` (Content-Length can lie or be absent),
    with 408 when it has not all arrived after ``timeout_s``, and ``JobCancelled`` soon after ``cancel`` is set
    (the drain's bound: a stalled upload holds SIGTERM no longer than a running job)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise RequestError(413, f"body: expected at most {limit} bytes, got {int(declared)}")
    chunks, size = [], 0

    async def read():
        nonlocal size
        stream = request.stream()
        while True:
            try:
                chunk = await stream.__anext__()
            except StopAsyncIteration:
                return
            except ClientDisconnect:
                raise
            except Exception as exc:  # the transport failed under the read: the connection's, not ours
                # (behind Ray Serve's proxy a client that leaves mid-upload surfaces as Ray's TaskCancelledError)
                raise ClientDisconnect(f"{type(exc).__name__} while reading the body") from exc
            size += len(chunk)
            if size > limit:
                raise RequestError(413, f"body: expected at most {limit} bytes, got more")
            chunks.append(chunk)

    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    reading = asyncio.ensure_future(read())
    try:
        while not (await asyncio.wait({reading}, timeout=min(LOCK_POLL_S, max(0.0, deadline - loop.time()))))[0]:
            if cancel.is_set():
                raise JobCancelled(f"while its body arrived ({size} bytes by then)")
            if loop.time() >= deadline:
                raise RequestError(408, f"body: expected the whole body within {timeout_s:g} s, got {size} bytes by "
                                        "then", headers={"Connection": "close"})
    finally:
        reading.cancel()
    reading.result()
    return b"".join(chunks)


class _HeaderLimit:
    """ASGI middleware: a request whose line and headers pass ``limit`` bytes is answered 431 in the API's error
    shape, whatever its path (the HTTP parser has already bounded what it buffers: see ``asymvq serve``)."""

    def __init__(self, app, limit: int, metrics: ServerMetrics):
        self.app, self.limit, self.metrics = app, limit, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            size = len(scope.get("raw_path") or b"") + len(scope.get("query_string") or b"") + sum(
                len(k) + len(v) + 4 for k, v in scope.get("headers", ()))
            if size > self.limit:
                if scope.get("path") in ENDPOINTS:
                    self.metrics.requests.labels("431").inc()
                shape = _error_for(scope.get("path") or "")
                response = shape(431, f"headers: expected at most {self.limit} bytes of request line and headers, "
                                      f"got {size}", headers={"Connection": "close"})
                return await response(scope, receive, send)
        return await self.app(scope, receive, send)


# -- the app --------------------------------------------------------------------------------
@dataclass
class JobResult:
    """What a back end returns for one parsed job (``asymvq.serve.http_form.parse_job``)."""

    png: bytes
    pre_error: float
    total_ms: float  # X-Asymvq-Latency-ms
    stages: dict[str, float]  # Server-Timing, ms
    batches: dict[str, int] = field(default_factory=dict)  # stage -> size of the batch the job ran in
    headers: dict[str, str] = field(default_factory=dict)  # extra response headers


class _Runner:
    """The pipeline behind its lock; each run gets its own timer and, if asked, its own scheduler."""

    def __init__(self, pipe, decode_options: dict | None = None):
        self.pipe = pipe
        self.lock = threading.Lock()
        self.decode_options = decode_options  # the server's --decode-region / --margin / --region-stats, every job's

    def run(self, job: dict, cancel: threading.Event | None = None, on_step=None) -> JobResult:
        """``on_step(event)``: the job's progress events (``asymvq.serve.progress``), from this thread."""
        cancel = cancel or threading.Event()
        # waiting for the pipeline, a cancelled job leaves at once rather than after the job ahead of it
        while not self.lock.acquire(timeout=LOCK_POLL_S):
            if cancel.is_set():
                raise JobCancelled("cancelled while waiting for the pipeline")
        try:
            timer = StageTimer(self.pipe.device)
            t0 = time.perf_counter()
            result = run_inpaint(self.pipe, job["source"], job["hole"], job["prompt"],
                                 negative_prompt=job["negative_prompt"], steps=job["steps"], guidance=job["guidance"],
                                 strength=job["strength"], seed=job["seed"], scheduler=job["scheduler"], timer=timer,
                                 cancel=cancel.is_set, decode_options=self.decode_options,
                                 on_step=job_on_step(on_step, job.get("preview"), self.pipe.latent_space))
            total_ms = (time.perf_counter() - t0) * 1e3
            stages: dict[str, float] = {}
            for name, ms in timer.collect():
                stages[name] = stages.get(name, 0.0) + ms
        finally:
            self.lock.release()
        buf = io.BytesIO()
        result.images[0].save(buf, format="PNG")
        return JobResult(buf.getvalue(), result.pre_error, total_ms, stages, {"pipeline": 1}, region_headers(timer))


def create_app(pipeline, *, max_pixels: int = 1024 * 1024, max_steps: int = 150, max_body_bytes: int = MAX_BODY_BYTES,
               max_queue: int = MAX_QUEUE, source: str | None = None, body_timeout_s: float = BODY_TIMEOUT_S,
               max_header_bytes: int = MAX_HEADER_BYTES, max_n: int = MAX_N,
               request_timeout_s: float = REQUEST_TIMEOUT_S, shutdown_timeout_s: float = SHUTDOWN_TIMEOUT_S,
               decode_options: dict | None = None) -> FastAPI:
    """A FastAPI app serving ``pipeline``: a pipeline of any family, a ``PipelineSource`` (built here, so a bad
    model fails before the port opens; ``/healthz`` reports its label) or a no-argument callable that builds
    one. ``source`` is what ``/healthz`` reports (default: the ``PipelineSource``'s label, else "pipeline").
    ``decode_options``: every job's region decoding (``{"region": "mask" | "auto", "margin": K, "region_stats":
    "box" | "lowres"}``); the region each job decoded (and its statistics) is its ``X-Asymvq-Decode-Region`` header."""
    decode_options = check_decode_options(decode_options)
    # a bad region, margin or region_stats fails now, not on every request
    check_region_options(decode_options.get("region"), decode_options.get("margin"), decode_options.get("region_stats"))
    if isinstance(pipeline, PipelineSource):
        source, pipe = source or pipeline.label, pipeline.build()
    else:
        pipe = pipeline if isinstance(pipeline, (InpaintPipeline, FamilyBase)) else pipeline()
    if not isinstance(pipe, (InpaintPipeline, FamilyBase)):
        raise ValueError(f"pipeline: expected an InpaintPipeline (or an SDXL / FLUX.1 Fill pipeline) or a callable "
                         f"returning one, got {type(pipe).__name__}")
    if isinstance(pipe, InpaintPipeline) and not pipe.spec.inpainting:
        raise ValueError("pipeline: expected an inpainting pipeline (9-channel UNet), got a text-to-image one")
    if decode_options:  # and one the decoder engine cannot run (tiles, "lowres" on an exported one)
        modes_engine(pipe.stages.decoders(), decode_options)
    runner = _Runner(pipe, decode_options)
    health = {"status": "ok", "source": source or "pipeline", "family": pipe.rules.name, "device": str(pipe.device),
              "dtype": dtype_name(pipe.dtype),
              "decoders": sorted(pipe.stages.decoders()), "scheduler": type(pipe.scheduler).__name__,
              "max_pixels": max_pixels, "max_steps": max_steps, "max_n": max_n,
              **({"decode_options": decode_options} if decode_options else {})}
    app = build_app(lambda job, cancel, on_step=None: run_in_threadpool(runner.run, job, cancel, on_step), health=health,
                    max_pixels=max_pixels,
                    max_steps=max_steps, max_body_bytes=max_body_bytes, max_queue=max_queue, queue_stage="pipeline",
                    body_timeout_s=body_timeout_s, max_header_bytes=max_header_bytes, max_n=max_n,
                    request_timeout_s=request_timeout_s, shutdown_timeout_s=shutdown_timeout_s, family=pipe.rules.name)
    app.state.runner = runner
    return app


def build_app(run_job, *, health, max_pixels: int, max_steps: int, max_body_bytes: int = MAX_BODY_BYTES,
              max_queue: int = MAX_QUEUE,
              queue_stage: str = "pipeline", metrics: ServerMetrics | None = None,
              body_timeout_s: float = BODY_TIMEOUT_S, max_header_bytes: int = MAX_HEADER_BYTES,
              max_n: int = MAX_N, request_timeout_s: float = REQUEST_TIMEOUT_S,
              shutdown_timeout_s: float = SHUTDOWN_TIMEOUT_S, family: str = SD) -> FastAPI:
    """The HTTP surface every front end shares: routes, limits, errors, headers and ``/metrics``; ``family``: the
    served pipeline's, whose rules check the forms (``asymvq.pipeline.family_rules``).

    ``run_job(job, cancel)`` is awaited with each parsed job and its ``threading.Event`` (set when the job is
    cancelled: stop and raise ``JobCancelled``) and returns a ``JobResult``; a streamed job (``job["preview"]``, its
    preview schedule) is run as ``run_job(job, cancel, on_step)``, ``on_step(event)`` taking its progress events
    from any thread (``asymvq.serve.progress.step_events``) (the single-process
    runner here, the Ray Serve ingress in ``asymvq.serve.ray_serve``); ``health`` is the ``/healthz`` dict
    or an async callable returning it; ``metrics``: a ``ServerMetrics`` the back end records into too.
    ``app.state.drain`` (``asymvq.serve.drain``) is what SIGTERM runs: 503 to new requests, the open ones
    finish for at most ``shutdown_timeout_s``."""
    for name, value in (("max_pixels", max_pixels), ("max_steps", max_steps), ("max_body_bytes", max_body_bytes),
                        ("max_queue", max_queue), ("max_header_bytes", max_header_bytes), ("max_n", max_n)):
        check_int(value, name)
    for name, value in (("body_timeout_s", body_timeout_s), ("request_timeout_s", request_timeout_s),
                        ("shutdown_timeout_s", shutdown_timeout_s)):
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 < value < float("inf"):
            raise ValueError(f"{name}: expected a number of seconds > 0, got {value!r}")
    metrics = metrics or ServerMetrics()
    waiting = metrics.queue_depth.labels(queue_stage)
    state = {"waiting": 0}  # touched only on the event loop's thread
    jobs = Jobs()
    drain = Drain(shutdown_timeout_s, lambda: state["waiting"], jobs.cancel_all)

    # /openapi.json and /docs from the typed models of asymvq.serve.schema; the forms there only document the
    # body, which the routes still read under their limits and split with http_form (why: schema.py's docstring)
    app = FastAPI(title="asymvq", version=__version__, docs_url="/docs", redoc_url=None, openapi_url="/openapi.json",
                  description="Diffusion inpainting with conditional decoders (docs/server.md). Limits of this server: "
                              f"max_pixels {max_pixels}, max_steps {max_steps}, max_n {max_n}, max_queue {max_queue}, "
                              f"max_body_bytes {max_body_bytes}, max_header_bytes {max_header_bytes}, "
                              f"body_timeout_s {body_timeout_s:g}, request_timeout_s {request_timeout_s:g} (a request's "
                              f"{TIMEOUT_HEADER} header may ask for less).")
    app.state.metrics = metrics
    app.state.drain = drain
    app.add_middleware(_HeaderLimit, limit=max_header_bytes, metrics=metrics)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        # 404/405 in the same {"error": ...} shape as everything else
        return _error_for(request.url.path)(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}")

    async def readiness():
        if drain.draining:  # out of the load balancer first; the requests it holds still finish
            return JSONResponse({"status": "draining", "in_progress": state["waiting"]}, status_code=503,
                                headers={"Retry-After": str(DRAIN_RETRY_AFTER_S)})
        body = health if isinstance(health, dict) else await health()
        if body.get("status") != "ok":  # readiness: a load balancer takes the server out while it is not
            return JSONResponse(body, status_code=503, headers={"Retry-After": "2"})
        return body

    ready_doc = {200: {"description": "Ready: the pipeline is loaded and every stage healthy; what it serves."},
                 503: {"description": "Not ready (a stage loading or unavailable, or draining after SIGTERM); "
                                        "Retry-After."}}
    # /healthz stays readiness (what it always answered); /readyz is its Kubernetes name
    app.get("/healthz", responses=ready_doc, summary="Readiness (also /readyz)")(readiness)
    app.get("/readyz", responses=ready_doc, summary="Readiness")(readiness)

    @app.get("/livez", responses={200: {"description": "The process answers: restart it only when this fails."}})
    async def liveness():
        # no back end asked: a busy or loading server is alive, and a restart would not make it ready sooner
        return {"status": "alive", "in_progress": state["waiting"], "max_queue": max_queue, "draining": drain.draining}

    @app.get("/metrics", response_class=Response,
             responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format."}})
    async def prometheus_metrics():
        return Response(metrics.render(), media_type=metrics.content_type)

    async def admitted(request: Request, error, handle):
        """One request's life on either endpoint: its place in the queue, body, parse, run and errors, each error in
        the endpoint's shape (``error(status, message, headers)``); ``handle(body)`` parses and runs the job."""
        t0 = time.perf_counter()
        try:
            response = await _admitted(request, error, handle)
        except asyncio.CancelledError:  # the front proxy (Ray Serve's) cancels a request whose client left
            metrics.requests.labels(str(CLIENT_CLOSED)).inc()
            raise
        metrics.requests.labels(str(response.status_code)).inc()
        if response.status_code == 200 and not isinstance(response, JobStream):  # a stream's 200 is its start
            metrics.stage_seconds.labels("request").observe(time.perf_counter() - t0)
        return response

    async def _admitted(request: Request, error, handle):
        # A request holds its place from the moment its body starts, through parsing, the queue and the run:
        # counted after parsing, bodies that finish together would all pass the bound (40 x 200, no 503).
        if drain.draining:
            return error(503, "server: expected a server that is not shutting down, got one draining; retry later "
                              "(another replica, or this one restarted)",
                         {"Retry-After": str(DRAIN_RETRY_AFTER_S), "Connection": "close"})
        if state["waiting"] >= max_queue:
            return error(503, f"server: expected at most {max_queue} requests in progress, got more; retry later",
                         {"Retry-After": "1"})
        t0 = asyncio.get_running_loop().time()
        try:
            timeout_s = request_timeout(request.headers.get(TIMEOUT_HEADER), request_timeout_s)
            ticket = jobs.open(request.headers.get(JOB_HEADER), request.url.path)
        except RequestError as exc:
            return error(exc.status, exc.message, exc.headers)
        state["waiting"] += 1
        waiting.inc()
        watcher = alarm = None

        def release():  # the request's place, freed once its job has stopped (a stream's: after its last event)
            for pending in (watcher, alarm):
                if pending is not None:
                    pending.cancel()
            jobs.close(ticket)
            state["waiting"] -= 1
            waiting.dec()

        def failure(exc: Exception) -> tuple[int, str, dict | None]:
            """(status, message, headers) of a job that raised ``exc``: the plain answer's and a stream's error event."""
            if isinstance(exc, JobCancelled):
                log.info("job %s stopped: %s (%s)", ticket.id, ticket.reason, exc)
                if ticket.reason == DRAINING:
                    return 503, (f"server: expected the job within the drain's {shutdown_timeout_s:g} s "
                                 f"(--shutdown-timeout), got past it; {exc}; retry later"), \
                        {"Retry-After": str(DRAIN_RETRY_AFTER_S), "Connection": "close"}
                if ticket.reason == DEADLINE:
                    return 504, (f"timeout: expected the job within {timeout_s:g} s ({TIMEOUT_HEADER}, at most the "
                                 f"server's {request_timeout_s:g}), got past it; {exc}"), None
                closed = ticket.reason.startswith("client")
                return CLIENT_CLOSED if closed else 409, f"job: {ticket.reason or 'cancelled'} ({exc})", None
            if isinstance(exc, ClientDisconnect):  # the client went away mid-upload: not a server error, no traceback
                log.info("client closed the connection before its request was read (%s)", request.client)
                return CLIENT_CLOSED, "client closed the connection", None
            if isinstance(exc, RequestError):
                return exc.status, exc.message, exc.headers
            if isinstance(exc, ValueError):  # the pipeline's own argument checks: the client's to fix
                return 400, " ".join(str(exc).split()), None
            # the server keeps serving; the traceback goes to the log only
            log.error("%s request failed", request.url.path, exc_info=exc)
            return 500, "internal error while inpainting (details in the server log)", None

        streamed = False
        try:
            body = await _read_body(request, max_body_bytes, body_timeout_s, ticket.event)
            watcher = asyncio.ensure_future(watch_disconnect(request, ticket))
            # the deadline counts from the request's arrival; past it the job stops at its next step (504)
            alarm = asyncio.get_running_loop().call_at(t0 + timeout_s, ticket.cancel, DEADLINE)
            response = await handle(body, ticket.event)
            if isinstance(response, StreamRequest):  # the job runs on inside the stream (asymvq.serve.progress)
                response = JobStream(response.run, response.events, ticket=ticket, arrived=t0,
                                     failure=lambda exc: failure(exc)[:2], release=release)
                streamed = True
        except Exception as exc:  # noqa: BLE001 - every failure answered in the endpoint's shape
            response = error(*failure(exc))
        finally:
            if not streamed:
                release()
        response.headers[JOB_HEADER] = ticket.id
        return response

    def observed(result: JobResult) -> dict[str, str]:
        """The result's stages into /metrics; its response headers."""
        for name, ms in result.stages.items():
            metrics.stage_seconds.labels(name).observe(ms / 1e3)
        for name, size in result.batches.items():
            metrics.batch_size.labels(name).observe(size)
        return {
            "X-Asymvq-Latency-ms": f"{result.total_ms:.1f}",
            "X-Asymvq-Pre-Error": f"{result.pre_error:.4f}",
            "Server-Timing": ", ".join(f"{name};dur={ms:.1f}" for name, ms in result.stages.items()),
            **result.headers,
        }

    @app.post("/v1/inpaint", response_class=Response,
              openapi_extra=form_schema(InpaintForm, max_steps=max_steps, max_pixels=max_pixels, family=family),
              responses={200: {"content": {"image/png": {"schema": {"type": "string", "format": "binary"}},
                                           **stream_content(NATIVE_EVENTS)},
                               "description": "The inpainted image; X-Asymvq-Latency-ms, X-Asymvq-Pre-Error, "
                                              "Server-Timing headers. With stream=true: server-sent events "
                                              "(progress, preview, result, error)."}, **error_responses(NativeError)})
    async def inpaint(request: Request):
        async def handle(body: bytes, cancel: threading.Event):
            fields = parse_form(body, request.headers.get("content-type", ""), FIELDS + STREAM_FIELDS)
            job = parse_job(fields, max_pixels=max_pixels, max_steps=max_steps, family=family)
            schedule = native_schedule(fields, max_steps)
            if schedule is not None:  # stream=true: progress, previews, then the result (asymvq.serve.progress)
                job["preview"] = schedule

                async def run(on_step):
                    return [await run_job(job, cancel, on_step)]

                return StreamRequest(run, NativeEvents(observed))
            result = await run_job(job, cancel)
            return Response(result.png, media_type="image/png", headers=observed(result))

        return await admitted(request, _error, handle)

    @app.post("/v1/images/edits", response_model=ImagesResponse,
              openapi_extra=form_schema(EditForm, max_steps=max_steps, max_pixels=max_pixels, max_n=max_n,
                                        family=family),
              responses={200: {"content": stream_content(OPENAI_EVENTS),
                               "description": "OpenAI's ImagesResponse; with stream=true OpenAI's image edit stream "
                                              "events (image_edit.partial_image, image_edit.completed, error)."},
                         **error_responses(OpenAIError)})
    async def images_edits(request: Request):
        async def handle(body: bytes, cancel: threading.Event):
            job, opts = parse_edit(parse_form(body, request.headers.get("content-type", ""), OPENAI_FIELDS),
                                   max_pixels=max_pixels, max_steps=max_steps, max_n=max_n, family=family)
            if opts["schedule"] is not None:  # stream=true: OpenAI's partial_image and completed events
                job["preview"] = opts["schedule"]

                async def run(on_step):
                    return [await run_job(job, cancel, on_step)]

                return StreamRequest(run, OpenAIEvents(observed, opts, openai_error))
            created = int(time.time())
            # image i: seed + i (wrapping inside the seed's range); on Ray the n jobs can share a batch
            results = await asyncio.gather(*(run_job({**job, "seed": (job["seed"] + i) % (SEED_MAX + 1)}, cancel)
                                             for i in range(opts["n"])))
            data = [{"b64_json": encode(r.png, opts["output_format"], opts["output_compression"])} for r in results]
            headers = [observed(r) for r in results][0]  # every image's stages into /metrics
            if len(results) > 1:  # the slowest image's latency; each image's Pre_error, in data's order
                headers["X-Asymvq-Latency-ms"] = f"{max(r.total_ms for r in results):.1f}"
                headers["X-Asymvq-Pre-Error"] = ", ".join(f"{r.pre_error:.4f}" for r in results)
            # no "usage": OpenAI's counts tokens of its own models; nothing here means the same
            return JSONResponse({"created": created, "data": data, "output_format": opts["output_format"],
                                 "size": opts["size"]}, headers=headers)

        return await admitted(request, _openai_error, handle)

    @app.get("/v1/jobs", responses={200: {"description": "The jobs in progress: id, path, age_s, cancelled."}})
    async def list_jobs():
        return {"jobs": jobs.listing()}

    @app.delete("/v1/jobs/{job_id}", response_model=JobCancelledBody,
                responses={404: {"model": NativeError, "description": "No job in progress has this id."}})
    async def cancel_job(job_id: str):
        """Cancel a job in progress (its id: the X-Asymvq-Job-Id header, the client's own or the server's): it stops
        at its next denoising step, or at once if it waits for the pipeline, and its request is answered 409."""
        if not jobs.cancel(job_id):
            shown = job_id if len(job_id) <= 64 else job_id[:64] + "..."
            return _error(404, f"job: expected the id of a job in progress, got {shown!r}")
        return {"id": job_id, "cancelled": True}

    return app
