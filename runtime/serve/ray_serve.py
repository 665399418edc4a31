"""``asymvq serve --ray``: the inpainting HTTP API on Ray Serve, one deployment per stage (docs/server.md).

The graph::

    HTTP -> ingress (parse + check the form: asymvq.serve.http_form; the FastAPI surface of asymvq.serve.server)
              -> denoise (CLIP, VAE encoder, UNet loop, scheduler; @serve.batch)
              -> decode  (asymmetric decoder with latents, image and mask, PNG, Pre_error; @serve.batch)

Each stage replica builds its pipeline in its constructor from the same ``PipelineSource`` as ``asymvq serve``
(``asymvq.pipeline.source``: a preset, a diffusers folder + decoder, or an engines directory) and
keeps only the engines its stage runs. Both stages batch with ``@serve.batch``: a batch is split into
groups that can share one model call (``asymvq.serve.batching.batch_key``: size, steps, scheduler, guidance
on/off, strength, decoder); each job keeps its own seed, so its image equals the single-process one. With
``--decode-region`` the decode stage groups a batch by mask box as well (``batching.decode_key``): each job gets
the region it gets alone and its ``X-Asymvq-Decode-Region`` header.

``ray_app(...)`` returns the Serve application (for ``serve.run``, ``serve run`` or KubeRay);
``build(args)`` is the same as an application builder (``serve run asymvq.serve.ray_serve:build preset=tiny``);
``serve_forever(...)`` is what the CLI runs. Ray is imported here only (the ``ray`` extra).
"""
from __future__ import annotations

import asyncio
import dataclasses
import io
import logging
import os
import signal
import threading
import time
from dataclasses import dataclass, field

import ray
from ray import serve

from ..engines.contract import DECODER_COMPONENTS
from ..models.devices import dtype_name
from ..pipeline.checks import check_int
from ..pipeline.decode_modes import cli_region_options
from ..pipeline.inpaint_pipeline import JobCancelled
from ..pipeline.source import PipelineSource
from ..pipeline.stages import DENOISE_COMPONENTS
from ..profiling.timing import StageTimer
from .batching import batch_key, decode_jobs, decode_key, denoise_jobs, finish_job, group
from .http_form import RequestError
from .limits import (
    BODY_TIMEOUT_S,
    DRAIN_CANCEL_GRACE_S,
    MAX_BODY_BYTES,
    MAX_N,
    RAY_MAX_QUEUE,
    REQUEST_TIMEOUT_S,
    RETRY_TIMEOUT_S,
    SHUTDOWN_TIMEOUT_S,
)
from .metrics import ServerMetrics
from .progress import step_events
from .results import JobResult, region_headers
from .server import build_app

log = logging.getLogger("asymvq.serve.ray_serve")
GRACE_LOOP_S = 0.5  # Serve's graceful_shutdown_wait_loop_s of every deployment
CANCEL_POLL_S = 0.02  # how often the ingress looks whether a job it waits on was cancelled
APP_NAME = "asymvq"


@dataclass(frozen=True)
class RayServeConfig:
    """Everything the graph is built from; plain values, so it travels to every replica."""

    source: PipelineSource = field(default_factory=PipelineSource.serving)  # as `asymvq serve`: tiny by default
    denoise_replicas: int = 1
    decode_replicas: int = 1
    gpus_per_denoise: float = 0.0
    gpus_per_decode: float = 0.0
    cpus_per_denoise: float = 1.0  # also the replica's torch threads (at least 1)
    cpus_per_decode: float = 1.0
    denoise_resources: dict | None = None  # Ray custom resources, e.g. {"decode_node": 1} to pin a stage to nodes
    decode_resources: dict | None = None
    max_batch: int = 8
    batch_wait_ms: float = 20.0
    max_pixels: int = 1024 * 1024
    max_steps: int = 150
    max_n: int = MAX_N  # /v1/images/edits: most images per request
    max_body_bytes: int = MAX_BODY_BYTES
    max_queue: int = RAY_MAX_QUEUE  # requests one ingress replica holds before answering 503
    body_timeout_s: float = BODY_TIMEOUT_S  # the whole body within this, or 408
    request_timeout_s: float = REQUEST_TIMEOUT_S  # a request's deadline (X-Asymvq-Timeout-s asks for less), or 504
    shutdown_timeout_s: float = SHUTDOWN_TIMEOUT_S  # a replica's graceful shutdown (Serve's graceful_shutdown_timeout_s)
    retry_timeout_s: float = RETRY_TIMEOUT_S  # how long the one retry of a job that met a lost replica may wait
    decode_region: str | None = None  # every job's decode: "mask", "auto" or "full"/None (asymvq serve's --decode-region)
    margin: int | None = None  # --margin, with a decode_region

    def __post_init__(self):
        if not isinstance(self.source, PipelineSource):
            raise ValueError(f"source: expected a PipelineSource, got {type(self.source).__name__}")
        for name in ("denoise_replicas", "decode_replicas", "max_batch", "max_pixels", "max_steps", "max_n",
                     "max_body_bytes", "max_queue"):
            check_int(getattr(self, name), f"--{name.replace('_', '-')}")
        for name in ("gpus_per_denoise", "gpus_per_decode", "cpus_per_denoise", "cpus_per_decode", "batch_wait_ms",
                     "body_timeout_s", "request_timeout_s", "shutdown_timeout_s", "retry_timeout_s"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not value >= 0:
                raise ValueError(f"--{name.replace('_', '-')}: expected a number >= 0, got {value!r}")
        cli_region_options(self.decode_region, self.margin)  # a bad region or margin fails here, not on every request

    @property
    def decode_options(self) -> dict:
        """``decode_region`` / ``margin`` as the pipeline's ``decode_options`` ({} for the whole image)."""
        return cli_region_options(self.decode_region, self.margin)

    @classmethod
    def from_options(cls, **options) -> "RayServeConfig":
        """One flat set of options (``preset="tiny", max_batch=4``): the ``PipelineSource`` fields build the
        source (``PipelineSource.serving``), the rest are this config's."""
        names = PipelineSource.field_names()
        source = PipelineSource.serving(**{k: v for k, v in options.items() if k in names})
        return cls(source=source, **{k: v for k, v in options.items() if k not in names})


async def _awaited(response):
    return await response


# -- the stages ---------------------------------------------------------------------------------
def _stage_pipeline(cfg: RayServeConfig, components: tuple[str, ...], threads: float):
    """The pipeline ``asymvq serve`` would build, of this stage's components only (an SD preset builds only
    those networks, an engines directory loads only those engines; an SDXL / FLUX.1 Fill source builds its
    pipeline whole and a decode stage then keeps its decoder only: ``PipelineSource.build``)."""
    import torch

    torch.set_num_threads(max(1, int(threads)))
    return cfg.source.build(components=components)


LOOPBACK = "127.0.0.1"
LOOPBACK_ENV = "ASYMVQ_RAY_LOOPBACK"  # set by loopback_only(); Ray's processes inherit it


def _replica_on_loopback() -> None:
    """In a replica of a loopback-only local Ray (``loopback_only``): Serve starts an inter-deployment gRPC
    server on ``[::]:0``, every interface, hard-coded in ``ray.serve._private.replica``; bind it to 127.0.0.1.
    Called from each deployment's constructor, which Serve runs before it starts that server."""
    if os.environ.get(LOOPBACK_ENV) != "1":
        return
    from ray.serve._private import replica

    add_port = getattr(replica, "add_port_to_grpc_server", None)
    if add_port is None or getattr(add_port, "asymvq_loopback", False):
        return  # another Ray (tests/runtime/test_ray_faults.py says whether it still listens outside), or done

    def on_loopback(server, address: str):
        return add_port(server, address.replace("[::]", LOOPBACK, 1))

    on_loopback.asymvq_loopback = True
    replica.add_port_to_grpc_server = on_loopback


def _node() -> str:
    return ray.util.get_node_ip_address()


def _stages_ms(timer: StageTimer) -> dict[str, float]:
    stages: dict[str, float] = {}
    for name, ms in timer.collect():
        stages[name] = stages.get(name, 0.0) + ms
    return stages


def _failure(exc: Exception) -> dict:
    """An error travels back as data: a ValueError is the client's (400), anything else a 500."""
    if isinstance(exc, JobCancelled):  # every job of its group left: nobody reads this
        return {"error": "cancelled", "message": str(exc)}
    if isinstance(exc, ValueError):
        return {"error": "value", "message": " ".join(str(exc).split())}
    if isinstance(exc, JobCancelled):  # every caller of the batch gave up: nobody waits for this answer
        return {"error": "cancelled", "message": str(exc)}
    log.exception("stage failed")
    return {"error": "internal", "message": f"{type(exc).__name__}: {exc}"}


def _run_groups(items: list, key, run_group) -> list:
    """Run each group of ``items`` sharing ``key`` in one call; a group that fails with a ValueError is
    rerun job by job, so one bad job cannot fail the others."""
    out: list = [None] * len(items)
    for idx in group(items, key):
        try:
            results = run_group([items[i] for i in idx])
        except Exception as exc:  # noqa: BLE001 - reported per job below
            if len(idx) > 1 and isinstance(exc, ValueError):
                results = []
                for i in idx:
                    try:
                        results += run_group([items[i]])
                    except Exception as one:  # noqa: BLE001
                        results.append(_failure(one))
            else:
                results = [_failure(exc)] * len(idx)
        for i, r in zip(idx, results):
            out[i] = r
    return out


def _configure_batching(method, cfg: RayServeConfig) -> None:
    method.set_max_batch_size(cfg.max_batch)
    method.set_batch_wait_timeout_s(cfg.batch_wait_ms / 1e3)


class DenoiseStage:
    """CLIP, VAE encoder, UNet loop and scheduler for batches of jobs.

    The batch handler is an async generator (``@serve.batch`` streams per request): it yields each job's progress
    events as its steps run (``asymvq.serve.progress.step_events``, for jobs that carry a ``preview`` schedule),
    then its result. ``stream`` is the streaming handle's method (``Ingress`` with ``on_step``), ``__call__`` the
    plain one: both share the batches. A job whose caller left (Serve cancels its call) marks itself cancelled;
    a group of the batch whose jobs have all left stops at its next step."""

    def __init__(self, cfg: RayServeConfig):
        _replica_on_loopback()
        self.cfg = cfg
        self.pipe = _stage_pipeline(cfg, DENOISE_COMPONENTS, threads=cfg.cpus_per_denoise)
        self.node = _node()
        _configure_batching(self.run_batch, cfg)

    def describe(self) -> dict:
        return {"device": str(self.pipe.device), "dtype": dtype_name(self.pipe.dtype),
                "scheduler": type(self.pipe.scheduler).__name__, "node": self.node}

    async def __call__(self, job: dict) -> dict:
        result = None
        async for item in self._items(job):  # to its end: Serve's batch queue then has no future left unread
            result = item.get("result", result)
        if result is None:
            raise RuntimeError("denoise: the batch ended without this job's result")
        return result

    async def stream(self, job: dict):
        async for item in self._items(job):
            for event in item.get("events", ()):
                yield {"event": event}
            if "result" in item:
                yield {"result": item["result"]}

    async def _items(self, job: dict):
        left = None
        try:
            async for item in self.run_batch(job):
                left = item.get("left", left)
                yield item
        except (asyncio.CancelledError, GeneratorExit):  # the caller left (Serve cancelled the call)
            if left is not None:
                left.set()
            raise

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.02)
    async def run_batch(self, jobs: list[dict]):
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        left = [threading.Event() for _ in jobs]
        slots = [{**job, "_slot": i} for i, job in enumerate(jobs)]

        def run_group(group_jobs):
            return self._denoise(group_jobs, lambda i, event: loop.call_soon_threadsafe(queue.put_nowait, (i, event)),
                                 [left[j["_slot"]] for j in group_jobs])

        yield [{"left": event} for event in left]
        # a thread, so the next batch gathers while this one computes
        task = asyncio.ensure_future(asyncio.to_thread(_run_groups, slots, batch_key, run_group))
        while True:
            getter = asyncio.ensure_future(queue.get())
            await asyncio.wait({task, getter}, return_when=asyncio.FIRST_COMPLETED)
            if not getter.done():
                getter.cancel()
                break
            events: list[list] = [[] for _ in jobs]
            i, event = getter.result()
            events[i].append(event)
            while not queue.empty():
                i, event = queue.get_nowait()
                events[i].append(event)
            yield [{"events": e} for e in events]
        events = [[] for _ in jobs]
        while not queue.empty():  # the last steps' events, queued before the thread returned
            i, event = queue.get_nowait()
            events[i].append(event)
        yield [{"events": e, "result": r} for e, r in zip(events, task.result())]

    def _denoise(self, jobs: list[dict], on_event=None, left=None) -> list[dict]:
        timer = StageTimer(self.pipe.device)
        schedules = [j.get("preview") for j in jobs]
        on_step = None
        if on_event is not None and any(s is not None for s in schedules):
            def on_step(step):
                for job, event in zip(jobs, step_events(step, schedules, self.pipe.latent_space)):
                    if event is not None:
                        on_event(job["_slot"], event)
        cancel = (lambda: all(e.is_set() for e in left)) if left else None
        denoised = denoise_jobs(self.pipe, jobs, timer, on_step=on_step, cancel=cancel)
        stages = _stages_ms(timer)
        return [dict(denoised=d, stages=stages, batch=len(jobs), node=self.node) for d in denoised]


class DecodeStage:
    """The asymmetric decoder for batches of denoised jobs, then PNG and Pre_error per job."""

    def __init__(self, cfg: RayServeConfig):
        _replica_on_loopback()
        self.cfg = cfg
        self.decode_options = cfg.decode_options  # checked once here, not per item of every batch
        self.pipe = _stage_pipeline(cfg, DECODER_COMPONENTS, threads=cfg.cpus_per_decode)
        self.node = _node()
        _configure_batching(self.run_batch, cfg)

    def describe(self) -> dict:
        return {"decoders": sorted(self.pipe.stages.decoders()), "node": self.node}

    async def __call__(self, item: dict) -> dict:
        return await self.run_batch(item)

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.02)
    async def run_batch(self, items: list[dict]) -> list[dict]:
        def key(it):  # with a region, one call per mask box
            return decode_key(it["denoised"], self.decode_options), it.get("decoder")

        return await asyncio.to_thread(_run_groups, items, key, self._decode)

    def _decode(self, items: list[dict]) -> list[dict]:
        timer = StageTimer(self.pipe.device)
        images = decode_jobs(self.pipe, [it["denoised"] for it in items], timer, decode_options=self.decode_options)
        stages, headers = _stages_ms(timer), region_headers(timer)  # one box per call: each job's own region
        out = []
        for it, image in zip(items, images):
            run = finish_job(image, it["denoised"])
            buf = io.BytesIO()
            run.images[0].save(buf, format="PNG")
            out.append(dict(png=buf.getvalue(), pre_error=run.pre_error, stages=stages, batch=len(items), node=self.node,
                            headers=headers))
        return out


def _check(result: dict) -> dict:
    if "error" in result:
        if result["error"] == "value":
            raise ValueError(result["message"])
        if result["error"] == "cancelled":
            raise JobCancelled(result["message"])
        raise RuntimeError(result["message"])
    return result


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
        _replica_on_loopback()
        self.denoise, self.decode, self.cfg = denoise, decode, cfg
        self.metrics = ServerMetrics()
        self.node = _node()
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
                return _check(await attempt())
            except serve.exceptions.BackPressureError:
                raise _unavailable(stage, "every replica's queue full") from None
            except _REPLICA_LOST as exc:
                log.warning("%s: a replica was lost (%s); retrying the job once", stage, type(exc).__name__)
                self.metrics.retries.labels(stage).inc()
            try:
                return _check(await asyncio.wait_for(attempt(), self.cfg.retry_timeout_s))
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


# -- the application ----------------------------------------------------------------------------
# The classes stay importable under their own names (Ray pickles them by reference, not by value
# with whatever batch-queue state this process holds); the deployments wrap them.
DENOISE = serve.deployment(DenoiseStage, name="denoise")
DECODE = serve.deployment(DecodeStage, name="decode")
INGRESS = serve.deployment(serve.ingress()(Ingress), name="ingress")


def _actor_options(cpus: float, gpus: float, resources: dict | None) -> dict:
    options = {"num_cpus": cpus}
    if gpus:
        options["num_gpus"] = gpus
    if resources:
        options["resources"] = dict(resources)
    return options


def ray_app(config: RayServeConfig | None = None, **kwargs):
    """The Serve application (ingress -> denoise -> decode), for ``serve.run`` or a RayService.

    ``ray_app(preset="tiny", max_batch=8)`` (``RayServeConfig.from_options``) or ``ray_app(RayServeConfig(...))``."""
    if config is not None and kwargs:
        raise ValueError("ray_app: pass a RayServeConfig or keyword arguments, not both")
    cfg = config or RayServeConfig.from_options(**kwargs)
    ongoing = 2 * cfg.max_batch  # a full batch computing and the next one gathering
    # Serve's graceful shutdown of each replica (serve.shutdown, a redeploy, a scale-down): it takes no new
    # requests and waits for its open ones, checking every half second (Serve's default 2 s made an idle
    # graph's shutdown 2 s longer per deployment), at most shutdown_timeout_s
    grace = dict(graceful_shutdown_timeout_s=cfg.shutdown_timeout_s, graceful_shutdown_wait_loop_s=GRACE_LOOP_S)
    denoise = DENOISE.options(
        num_replicas=cfg.denoise_replicas, max_ongoing_requests=ongoing, **grace,
        ray_actor_options=_actor_options(cfg.cpus_per_denoise, cfg.gpus_per_denoise, cfg.denoise_resources),
    ).bind(cfg)
    decode = DECODE.options(
        num_replicas=cfg.decode_replicas, max_ongoing_requests=ongoing, **grace,
        ray_actor_options=_actor_options(cfg.cpus_per_decode, cfg.gpus_per_decode, cfg.decode_resources),
    ).bind(cfg)
    return INGRESS.options(max_ongoing_requests=max(100, cfg.max_queue + 8), **grace,
                           ray_actor_options={"num_cpus": 0}).bind(denoise, decode, cfg)


def build(args: dict):
    """Application builder for ``serve run asymvq.serve.ray_serve:build key=value ...`` and RayService ``args``:
    the ``PipelineSource`` and ``RayServeConfig`` field names, strings converted to the fields' types."""
    fields = {f.name: f for cls in (PipelineSource, RayServeConfig) for f in dataclasses.fields(cls)
              if f.name != "source"}
    unknown = sorted(set(args) - set(fields))
    if unknown:
        raise ValueError(f"args: unknown {unknown}, expected names among {sorted(fields)}")
    typed = {}
    for name, value in args.items():
        kind = fields[name].type
        if isinstance(value, str) and "int" in kind:
            value = int(value)
        elif isinstance(value, str) and "float" in kind:
            value = float(value)
        typed[name] = value
    return ray_app(RayServeConfig.from_options(**typed))


def loopback_only() -> None:
    """Make the local Ray this process starts listen on 127.0.0.1 only (GCS, raylet, workers, agents).

    An unauthenticated Ray reachable from the network runs anyone's jobs (CVE-2023-48022, "ShadowRay").
    ``--node-ip-address=127.0.0.1`` alone is not enough: Ray resolves a loopback node address to the
    machine's interface address and its gRPC servers bind to every interface. Ray's single-machine mode
    (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, the default on Windows and macOS) keeps every address on
    the loopback; the variable reaches the processes Ray starts, and the constant it sets is set here too
    because this process has imported Ray already. ``tests/runtime/test_ray_faults.py`` reads where the
    started processes listen, so a Ray that changes this fails there."""
    from ray._private import ray_constants

    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    os.environ[LOOPBACK_ENV] = "1"  # and the replicas' own gRPC server: _replica_on_loopback
    ray_constants.ENABLE_RAY_CLUSTER = False


class _Stop(Exception):
    """The first SIGTERM or SIGINT of ``serve_forever``."""


def _drain(cfg: RayServeConfig, why: str) -> None:
    """Drain the ingress replica (the ingress is one replica: a handle call reaches it) and log what it did."""
    log.warning("%s: draining (at most %g s), then shutting Serve down", why, cfg.shutdown_timeout_s)
    try:
        done = serve.get_app_handle(APP_NAME).drain.remote().result(
            timeout_s=cfg.shutdown_timeout_s + DRAIN_CANCEL_GRACE_S + 10)
        log.warning("drained in %.2f s: %d cancelled, %d still open", done["waited_s"], done["cancelled"], done["left"])
    except Exception as exc:  # noqa: BLE001 - no graph yet (a signal during startup) or the ingress gone: shut down anyway
        log.warning("drain skipped: %s: %s", type(exc).__name__, exc)


def serve_forever(cfg: RayServeConfig, *, host: str = "127.0.0.1", port: int = 8000, address: str | None = None,
                  ready=None) -> None:
    """Start (or join, with ``address``) Ray, deploy the graph with HTTP on ``host:port``, serve until
    interrupted, then shut Serve (and a Ray started here) down. ``ready(url)`` is called once serving.

    The first SIGTERM or SIGINT drains the ingress (``Ingress.drain``: new requests 503, open ones finish for
    ``cfg.shutdown_timeout_s``, then are cancelled) before ``serve.shutdown()``, and the function returns
    (``asymvq serve --ray`` exits 0); a second one skips what is left of the drain (KeyboardInterrupt)."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    started = not ray.is_initialized()
    if started:
        if address is None:
            loopback_only()
        # "local": a new Ray of its own, never one a `ray start` on this machine left behind
        ray.init(address=address or "local", include_dashboard=False, logging_level=logging.WARNING,
                 log_to_driver=False, **({"_node_ip_address": LOOPBACK} if address is None else {}))
    def stop(signum, frame):  # SIGTERM (Kubernetes, systemd, kill) and Ctrl-C: drain, then the finally below
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, hurry)
        raise _Stop(signal.Signals(signum).name)

    def hurry(signum, frame):
        raise KeyboardInterrupt

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, stop)
    try:
        serve.start(http_options={"host": host, "port": port})
        serve.run(ray_app(cfg), name=APP_NAME, route_prefix="/")
        url = f"http://{host}:{port}"
        if ready is not None:
            ready(url)
        while True:
            time.sleep(3600)
    except _Stop as why:
        _drain(cfg, str(why))
    finally:
        try:
            serve.shutdown()
        finally:
            if started:
                ray.shutdown()
