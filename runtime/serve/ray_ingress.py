"""The ingress deployment of ``asymvq serve --ray`` (docs/server.md): the HTTP surface of ``asymvq serve``
(``asymvq.serve.server.build_app``) with the two stage deployments (``asymvq.serve.ray_stages``) behind it.

Each job is a denoise call (streamed when the job streams its progress) and then a decode call; a call that
meets a lost replica is retried once, a call whose job is cancelled is cancelled in Serve, and ``/healthz``
asks Serve's controller how every deployment is.
"""
from __future__ import annotations

import asyncio
import logging
import time

import ray
from ray import serve

from ..pipeline.inpaint_pipeline import JobCancelled
from .http_form import RequestError
from .limits import CANCEL_POLL_S
from .metrics import ServerMetrics
from .ray_config import RayServeConfig
from .ray_loopback import replica_on_loopback
from .ray_stages import checked, node
from .results import JobResult
from .server import build_app

log = logging.getLogger("asymvq.serve.ray_serve")  # the Ray graph's one logger, whichever module logs


async def _awaited(response):
    return await response


# A replica that died (killed, OOM, node lost) or that Serve cannot reach: the job never ran to its end
# there, and it is deterministic (its own seed, its own inputs), so running it again gives the same image.
_REPLICA_LOST = (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError,
                 serve.exceptions.ReplicaUnavailableError, serve.exceptions.DeploymentUnavailableError)
HEALTHY = "HEALTHY"


def _unavailable(stage: str, why: str) -> RequestError:
    return RequestError(503, f"{stage}: expected a live replica, got {why}; retry later", headers={"Retry-After": "2"})


class Ingress:
    """The HTTP surface of ``asymvq serve`` (``asymvq.serve.server.build_app``) over the two stage deployments."""

    def __init__(self, denoise, decode, cfg: RayServeConfig):
        replica_on_loopback()
        self.denoise, self.decode, self.cfg = denoise, decode, cfg
        self.metrics = ServerMetrics()
        self.node = node()
        self._describe: dict | None = None
        self._app = None

    def __serve_build_asgi_app__(self):
        cfg = self.cfg
        self._app = build_app(self.run_job, health=self.health, max_pixels=cfg.max_pixels, max_steps=cfg.max_steps,
                              max_body_bytes=cfg.max_body_bytes, max_queue=cfg.max_queue, queue_stage="ingress",
                              metrics=self.metrics, body_timeout_s=cfg.body_timeout_s, max_n=cfg.max_n,
                              request_timeout_s=cfg.request_timeout_s, shutdown_timeout_s=cfg.shutdown_timeout_s,
                              family=cfg.source.family)
        return self._app

    async def drain(self) -> dict:
        """What ``asymvq serve --ray`` calls on SIGTERM before ``serve.shutdown()`` (``asymvq.serve.drain``): new
        requests 503, ``/readyz`` draining, open ones finish for ``shutdown_timeout_s``, then are cancelled (503)."""
        return await self._app.state.drain.run()

    async def _deployments(self) -> dict | None:
        """{deployment: {"status", "replicas"}} from Serve's controller, asked on every call (what it knows now:
        a replica that died is UNHEALTHY there until its replacement runs); None where there is no controller
        (Serve's local testing mode)."""
        try:
            context = serve.get_replica_context()
            status = await asyncio.wait_for(asyncio.to_thread(serve.status), 5)
        except Exception:  # noqa: BLE001 - no controller to ask (local testing mode) or it did not answer
            return None
        app = status.applications.get(context.app_name)
        if app is None:
            return {}
        return {name: {"status": str(getattr(d.status, "value", d.status)),
                       "replicas": {str(getattr(k, "value", k)): v for k, v in d.replica_states.items()}}
                for name, d in app.deployments.items()}

    async def health(self):
        """``/healthz``: ``ok`` (200) only while every deployment is healthy; ``unavailable`` (503) otherwise."""
        cfg = self.cfg
        deployments = await self._deployments()
        ready = deployments is None or (bool(deployments) and all(d["status"] == HEALTHY for d in deployments.values()))
        if self._describe is None and ready:  # what the stages run: fixed for their lifetime, asked once
            try:
                den, dec = await asyncio.wait_for(asyncio.gather(self.denoise.describe.remote(),
                                                                 self.decode.describe.remote()), 10)
                self._describe = {"device": den["device"], "dtype": den["dtype"], "decoders": dec["decoders"],
                                  "scheduler": den["scheduler"]}
            except (asyncio.TimeoutError, *_REPLICA_LOST):
                ready = False
        body = {"status": "ok" if ready else "unavailable", "source": cfg.source.label, "family": cfg.source.family,
                **(self._describe or {}),
                "max_pixels": cfg.max_pixels, "max_steps": cfg.max_steps, "max_n": cfg.max_n,
                **({"decode_options": cfg.decode_options} if cfg.decode_options else {}),
                "ray": {"denoise_replicas": cfg.denoise_replicas, "decode_replicas": cfg.decode_replicas,
                        "max_batch": cfg.max_batch, "batch_wait_ms": cfg.batch_wait_ms,
                        **({"deployments": deployments} if deployments is not None else {})}}
        return body  # build_app answers 503 when status is not "ok"

    @staticmethod
    async def _until_cancelled(response, cancel):
        """The stage's answer, or ``JobCancelled`` soon after ``cancel`` is set: the call is cancelled in Serve
        (a job still waiting for its batch leaves it; one already in a batch's step loop runs to its end there)."""
        if cancel is None:
            return await response
        task = asyncio.ensure_future(_awaited(response))
        while True:
            done, _ = await asyncio.wait({task}, timeout=CANCEL_POLL_S)
            if done:
                return task.result()
            if cancel.is_set():
                response.cancel()
                task.cancel()
                raise JobCancelled("cancelled while a stage ran it")

    @staticmethod
    async def _streamed(handle, payload, cancel, on_step) -> dict:
        """The denoise stage's streaming call: each progress event to ``on_step`` as it arrives, then the result;
        ``JobCancelled`` soon after ``cancel`` is set (the call is cancelled in Serve: its job marks itself left)."""
        stream = handle.options(stream=True).stream.remote(payload)
        while True:
            step = asyncio.ensure_future(stream.__anext__())
            try:
                while True:
                    done, _ = await asyncio.wait({step}, timeout=CANCEL_POLL_S)
                    if done:
                        break
                    if cancel is not None and cancel.is_set():
                        raise JobCancelled("cancelled while a stage ran it")
            except (JobCancelled, asyncio.CancelledError):  # this call cancelled too (Serve's proxy: client gone)
                stream.cancel()
                step.cancel()
                raise
            try:
                item = step.result()
            except StopAsyncIteration:
                raise RuntimeError("denoise: the stream ended without the job's result") from None
            if "event" in item:
                on_step(item["event"])
            else:
                return item["result"]

    async def _call(self, stage: str, handle, payload: dict, cancel=None, on_step=None) -> dict:
        """One stage call; a call that met a lost replica is retried once (same job: same seed, same image; a
        stream's progress then starts again), bounded by ``retry_timeout_s``; a second loss or a retry past that is
        a 503, never a 500. ``on_step``: stream the stage's progress events (the denoise stage)."""
        queue = self.metrics.queue_depth.labels(stage)
        queue.inc()

        def attempt():
            if on_step is not None:
                return self._streamed(handle, payload, cancel, on_step)
            return self._until_cancelled(handle.remote(payload), cancel)

        try:
            try:
                return checked(await attempt())
            except serve.exceptions.BackPressureError:
                raise _unavailable(stage, "every replica's queue full") from None
            except _REPLICA_LOST as exc:
                log.warning("%s: a replica was lost (%s); retrying the job once", stage, type(exc).__name__)
                self.metrics.retries.labels(stage).inc()
            try:
                return checked(await asyncio.wait_for(attempt(), self.cfg.retry_timeout_s))
            except asyncio.TimeoutError:
                raise _unavailable(stage, f"none within {self.cfg.retry_timeout_s:g} s of the retry") from None
            except (serve.exceptions.BackPressureError, *_REPLICA_LOST) as exc:
                raise _unavailable(stage, f"a lost replica twice ({type(exc).__name__})") from None
        finally:
            queue.dec()

    async def run_job(self, job: dict, cancel=None, on_step=None):
        """``build_app``'s back end: ``on_step(event)`` takes a streamed job's progress events (on this loop)."""
        t0 = time.perf_counter()
        den = await self._call("denoise", self.denoise, job, cancel, on_step)
        t1 = time.perf_counter()
        if cancel is not None and cancel.is_set():
            raise JobCancelled("cancelled before decoding")
        dec = await self._call("decode", self.decode, den, cancel)
        t2 = time.perf_counter()
        stages = {**den["stages"], **dec["stages"], "denoise_stage": (t1 - t0) * 1e3, "decode_stage": (t2 - t1) * 1e3}
        return JobResult(dec["png"], dec["pre_error"], (t2 - t0) * 1e3, stages,
                         batches={"denoise": den["batch"], "decode": dec["batch"]},
                         headers={"X-Asymvq-Batch": f"denoise={den['batch']}, decode={dec['batch']}",
                                  "X-Asymvq-Nodes": f"ingress={self.node}, denoise={den['node']}, decode={dec['node']}",
                                  **dec.get("headers", {})})
