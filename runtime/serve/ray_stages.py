"""The two stage deployments of ``asymvq serve --ray`` (docs/server.md): ``DenoiseStage`` (CLIP, VAE encoder,
UNet loop, scheduler) and ``DecodeStage`` (asymmetric decoder, PNG, Pre_error), each batching with
``@serve.batch`` and building only its stage's part of the pipeline.

A batch is split into groups that can share one model call (``asymvq.serve.batching``); an error travels back
to the ingress as data (``_failure``), raised again there by ``checked``.
"""
from __future__ import annotations

import asyncio
import logging
import threading

import ray
from ray import serve

from ..engines.contract import DECODER_COMPONENTS
from ..models.devices import dtype_name
from ..pipeline.decode_modes import modes_engine
from ..pipeline.inpaint_pipeline import JobCancelled
from ..pipeline.stages import DENOISE_COMPONENTS
from ..profiling.timing import StageTimer
from .batching import batch_key, decode_jobs, decode_key, denoise_jobs, finish_job, group
from .progress import step_events
from .ray_config import RayServeConfig
from .ray_loopback import replica_on_loopback
from .results import png_bytes, region_headers, stage_ms

log = logging.getLogger("asymvq.serve.ray_serve")  # the Ray graph's one logger, whichever module logs


def _stage_pipeline(cfg: RayServeConfig, components: tuple[str, ...], threads: float):
    """The pipeline ``asymvq serve`` would build, of this stage's components only (an SD preset builds only
    those networks, an engines directory loads only those engines; an SDXL / FLUX.1 Fill source builds its
    pipeline whole and a decode stage then keeps its decoder only: ``PipelineSource.build``)."""
    import torch

    torch.set_num_threads(max(1, int(threads)))
    return cfg.source.build(components=components)


def node() -> str:
    return ray.util.get_node_ip_address()


def _failure(exc: Exception) -> dict:
    """An error travels back as data: a ValueError is the client's (400), anything else a 500."""
    if isinstance(exc, JobCancelled):  # every job of its group left: nobody reads this
        return {"error": "cancelled", "message": str(exc)}
    if isinstance(exc, ValueError):
        return {"error": "value", "message": " ".join(str(exc).split())}
    log.exception("stage failed")
    return {"error": "internal", "message": f"{type(exc).__name__}: {exc}"}


def checked(result: dict) -> dict:
    """A stage's answer, or the error it carries (``_failure``) raised again."""
    if "error" in result:
        if result["error"] == "value":
            raise ValueError(result["message"])
        if result["error"] == "cancelled":
            raise JobCancelled(result["message"])
        raise RuntimeError(result["message"])
    return result


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
        replica_on_loopback()
        self.cfg = cfg
        self.pipe = _stage_pipeline(cfg, DENOISE_COMPONENTS, threads=cfg.cpus_per_denoise)
        self.node = node()
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
        stages = stage_ms(timer)
        return [dict(denoised=d, stages=stages, batch=len(jobs), node=self.node) for d in denoised]


class DecodeStage:
    """The asymmetric decoder for batches of denoised jobs, then PNG and Pre_error per job."""

    def __init__(self, cfg: RayServeConfig):
        replica_on_loopback()
        self.cfg = cfg
        self.decode_options = cfg.decode_options  # checked once here, not per item of every batch
        self.pipe = _stage_pipeline(cfg, DECODER_COMPONENTS, threads=cfg.cpus_per_decode)
        if self.decode_options:  # one this node's decoder engine cannot run fails the replica's start, not each job
            modes_engine(self.pipe.stages.decoders(), self.decode_options)
        self.node = node()
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
        stages, headers = stage_ms(timer), region_headers(timer)  # one box per call: each job's own region
        out = []
        for it, image in zip(items, images):
            run = finish_job(image, it["denoised"])
            out.append(dict(png=png_bytes(run.images[0]), pre_error=run.pre_error, stages=stages, batch=len(items),
                            node=self.node, headers=headers))
        return out
