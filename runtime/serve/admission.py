"""One request's life around its job, for every back end of ``asymvq.serve.server.build_app``: its place in the
queue, the header and body limits, its id, deadline and cancellation, the drain, and every failure as a status
and message in the endpoint's error shape (docs/server.md).

A request holds its place from the moment its body starts, through parsing, the queue and the run (a stream's:
until its last event); ``Admission.jobs`` is what ``/v1/jobs`` lists and cancels, ``Admission.drain`` what SIGTERM
runs (``asymvq.serve.drain``).
"""
from __future__ import annotations

import asyncio
import logging
import threading
import time

from fastapi import Request
from fastapi.responses import JSONResponse
from starlette.requests import ClientDisconnect

from ..pipeline.inpaint_pipeline import JobCancelled
from .drain import DRAINING, Drain
from .http_form import RequestError
from .jobs import DEADLINE, JOB_HEADER, TIMEOUT_HEADER, Jobs, request_timeout, watch_disconnect
from .limits import CANCEL_POLL_S, CLIENT_CLOSED, DRAIN_RETRY_AFTER_S
from .metrics import ServerMetrics
from .openai_edits import openai_error
from .progress import JobStream, StreamRequest

log = logging.getLogger("asymvq.serve.server")  # the server's logger, by the name docs/server.md gives operators
ENDPOINTS = ("/v1/inpaint", "/v1/images/edits")  # the job endpoints: counted in /metrics' requests


# -- the error shapes -------------------------------------------------------------------------
def native_error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def openai_error_response(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse(openai_error(status, message), status_code=status, headers=headers)


def error_for(path: str):
    """The error shape of the endpoint at ``path``: OpenAI's under /v1/images/, asymvq's elsewhere."""
    return openai_error_response if path.startswith("/v1/images/") else native_error


# -- the request's headers and body -------------------------------------------------------------
class HeaderLimit:
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
                shape = error_for(scope.get("path") or "")
                response = shape(431, f"headers: expected at most {self.limit} bytes of request line and headers, "
                                      f"got {size}", headers={"Connection": "close"})
                return await response(scope, receive, send)
        return await self.app(scope, receive, send)


async def read_body(request: Request, limit: int, timeout_s: float, cancel: threading.Event) -> bytes:
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
        while not (await asyncio.wait({reading}, timeout=min(CANCEL_POLL_S, max(0.0, deadline - loop.time()))))[0]:
            if cancel.is_set():
                raise JobCancelled(f"while its body arrived ({size} bytes by then)")
            if loop.time() >= deadline:
                raise RequestError(408, f"body: expected the whole body within {timeout_s:g} s, got {size} bytes by "
                                        "then", headers={"Connection": "close"})
    finally:
        reading.cancel()
    reading.result()
    return b"".join(chunks)


# -- the request's place, deadline and failures ----------------------------------------------------
class Admission:
    """The requests in progress on one app: at most ``max_queue`` of them (counted in ``metrics``' queue depth of
    ``queue_stage``), each under its deadline and the drain's bound."""

    def __init__(self, metrics: ServerMetrics, *, queue_stage: str, max_queue: int, max_body_bytes: int,
                 body_timeout_s: float, request_timeout_s: float, shutdown_timeout_s: float):
        self.metrics, self.max_queue, self.max_body_bytes = metrics, max_queue, max_body_bytes
        self.body_timeout_s, self.request_timeout_s = body_timeout_s, request_timeout_s
        self.shutdown_timeout_s = shutdown_timeout_s
        self.waiting = metrics.queue_depth.labels(queue_stage)
        self.in_progress = 0  # touched only on the event loop's thread
        self.jobs = Jobs()
        self.drain = Drain(shutdown_timeout_s, lambda: self.in_progress, self.jobs.cancel_all)

    async def __call__(self, request: Request, error, handle):
        """One request's life on either endpoint: its place in the queue, body, parse, run and errors, each error in
        the endpoint's shape (``error(status, message, headers)``); ``handle(body)`` parses and runs the job."""
        metrics = self.metrics
        t0 = time.perf_counter()
        try:
            response = await self._admitted(request, error, handle)
        except asyncio.CancelledError:  # the front proxy (Ray Serve's) cancels a request whose client left
            metrics.requests.labels(str(CLIENT_CLOSED)).inc()
            raise
        metrics.requests.labels(str(response.status_code)).inc()
        if response.status_code == 200 and not isinstance(response, JobStream):  # a stream's 200 is its start
            metrics.stage_seconds.labels("request").observe(time.perf_counter() - t0)
        return response

    async def _admitted(self, request: Request, error, handle):
        # A request holds its place from the moment its body starts, through parsing, the queue and the run:
        # counted after parsing, bodies that finish together would all pass the bound (40 x 200, no 503).
        jobs, request_timeout_s, shutdown_timeout_s = self.jobs, self.request_timeout_s, self.shutdown_timeout_s
        if self.drain.draining:
            return error(503, "server: expected a server that is not shutting down, got one draining; retry later "
                              "(another replica, or this one restarted)",
                         {"Retry-After": str(DRAIN_RETRY_AFTER_S), "Connection": "close"})
        if self.in_progress >= self.max_queue:
            return error(503, f"server: expected at most {self.max_queue} requests in progress, got more; retry later",
                         {"Retry-After": "1"})
        t0 = asyncio.get_running_loop().time()
        try:
            timeout_s = request_timeout(request.headers.get(TIMEOUT_HEADER), request_timeout_s)
            ticket = jobs.open(request.headers.get(JOB_HEADER), request.url.path)
        except RequestError as exc:
            return error(exc.status, exc.message, exc.headers)
        self.in_progress += 1
        self.waiting.inc()
        watcher = alarm = None

        def release():  # the request's place, freed once its job has stopped (a stream's: after its last event)
            for pending in (watcher, alarm):
                if pending is not None:
                    pending.cancel()
            jobs.close(ticket)
            self.in_progress -= 1
            self.waiting.dec()

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
            body = await read_body(request, self.max_body_bytes, self.body_timeout_s, ticket.event)
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
