"""The single-process back end of ``asymvq serve`` (``asymvq.serve.server.create_app``): one pipeline behind a lock.

Each run gets its own timer and, if asked, its own scheduler (the pipeline's attributes are never touched), but
one torch model run at a time per device is what keeps latency predictable, so the lock stays; a job waiting for
it leaves as soon as it is cancelled.
"""
from __future__ import annotations

import threading
import time

from ..pipeline.inpaint_pipeline import JobCancelled
from ..pipeline.inpaint_run import run_inpaint
from ..profiling.timing import StageTimer
from .limits import CANCEL_POLL_S
from .progress import job_on_step
from .results import JobResult, png_bytes, region_headers, stage_ms


class PipelineRunner:
    """The pipeline behind its lock; each run gets its own timer and, if asked, its own scheduler."""

    def __init__(self, pipe, decode_options: dict | None = None):
        self.pipe = pipe
        self.lock = threading.Lock()
        self.decode_options = decode_options  # the server's --decode-region / --margin / --region-stats, every job's

    def run(self, job: dict, cancel: threading.Event | None = None, on_step=None) -> JobResult:
        """``on_step(event)``: the job's progress events (``asymvq.serve.progress``), from this thread."""
        cancel = cancel or threading.Event()
        # waiting for the pipeline, a cancelled job leaves at once rather than after the job ahead of it
        while not self.lock.acquire(timeout=CANCEL_POLL_S):
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
            stages = stage_ms(timer)
        finally:
            self.lock.release()
        return JobResult(png_bytes(result.images[0]), result.pre_error, total_ms, stages, {"pipeline": 1},
                         region_headers(timer))
