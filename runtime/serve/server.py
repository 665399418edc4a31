"""HTTP server for inpainting (any family: SD 1.x, SDXL, FLUX.1 Fill): ``POST /v1/inpaint``, OpenAI's ``POST /v1/images/edits``
(``asymvq.serve.openai_edits``), ``GET/DELETE /v1/jobs``, ``/healthz`` (= ``/readyz``), ``/livez``,
``/metrics``, ``/openapi.json`` and ``/docs`` (docs/server.md).

``create_app(pipeline)`` returns a FastAPI app around one pipeline (an ``InpaintPipeline`` or an SDXL /
FLUX.1 Fill one: ``pipe.rules`` says what its jobs may ask, and the form is checked by them). Concurrency:
one request at a time goes through the pipeline, behind a lock (``asymvq.serve.runner``); requests queue for it
in worker threads while the event loop keeps answering ``/healthz``, and past ``max_queue`` waiting requests
the server answers 503 at once rather than holding connections for minutes. Run one process per GPU.

Bad input never reaches the GPU: the form is parsed and checked first (``asymvq.serve.http_form``),
and every error a client can fix is a 4xx ``{"error": "<argument>: expected ..., got ..."}``,
the same words the pipeline's own ValueErrors use. Anything else is a 500 ``{"error": ...}``
with the traceback in the server log only. The body is read under ``max_body_bytes``. On
``/v1/images/`` paths the same statuses and words come in OpenAI's error shape.

Every job request has an id (``asymvq.serve.jobs``); a client's disconnect, ``DELETE /v1/jobs/{id}`` or the
request's deadline stops its job at the next denoising step and frees its place (``asymvq.serve.admission``:
a request's place, limits, deadline, drain and failures).

``build_app(run_job, ...)`` is that HTTP surface (routes, limits, errors, headers, ``GET /metrics``)
around any back end: ``create_app``'s runner, the Ray Serve ingress in ``asymvq.serve.ray_ingress``.
"""
from __future__ import annotations

import asyncio
import threading
import time

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import __version__
from ..models.devices import dtype_name
from ..models.region import check_region_options
from ..pipeline.checks import check_int
from ..pipeline.decode_modes import check_decode_options, modes_engine
from ..pipeline.family_base import FamilyBase
from ..pipeline.family_rules import SD
from ..pipeline.inpaint_pipeline import InpaintPipeline
from ..pipeline.job_rules import SEED_MAX
from ..pipeline.source import PipelineSource
from .admission import Admission, HeaderLimit, error_for, native_error, openai_error_response
from .http_form import FIELDS, parse_form, parse_job
from .jobs import TIMEOUT_HEADER
from .limits import (
    BODY_TIMEOUT_S,
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
from .progress import STREAM_FIELDS, NativeEvents, StreamRequest, native_schedule
from .results import JobResult
from .runner import PipelineRunner
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
    runner = PipelineRunner(pipe, decode_options)
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
    runner, ``asymvq.serve.runner``, or the Ray Serve ingress, ``asymvq.serve.ray_ingress``); ``health`` is the ``/healthz`` dict
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
    admitted = Admission(metrics, queue_stage=queue_stage, max_queue=max_queue, max_body_bytes=max_body_bytes,
                         body_timeout_s=body_timeout_s, request_timeout_s=request_timeout_s,
                         shutdown_timeout_s=shutdown_timeout_s)
    jobs, drain = admitted.jobs, admitted.drain

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
    app.add_middleware(HeaderLimit, limit=max_header_bytes, metrics=metrics)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        # 404/405 in the same {"error": ...} shape as everything else
        return error_for(request.url.path)(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}")

    async def readiness():
        if drain.draining:  # out of the load balancer first; the requests it holds still finish
            return JSONResponse({"status": "draining", "in_progress": admitted.in_progress}, status_code=503,
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
        return {"status": "alive", "in_progress": admitted.in_progress, "max_queue": max_queue, "draining": drain.draining}

    @app.get("/metrics", response_class=Response,
             responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format."}})
    async def prometheus_metrics():
        return Response(metrics.render(), media_type=metrics.content_type)

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

        return await admitted(request, native_error, handle)

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

        return await admitted(request, openai_error_response, handle)

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
            return native_error(404, f"job: expected the id of a job in progress, got {shown!r}")
        return {"id": job_id, "cancelled": True}

    return app
