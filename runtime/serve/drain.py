"""Graceful drain on SIGTERM (or Ctrl-C), the same for ``asymvq serve`` and the Ray ingress (docs/server.md).

``Drain.run()``: from its first moment every new job request is answered 503 with ``Retry-After`` (in the
endpoint's error shape) and ``Connection: close``, ``/readyz`` answers 503 ``draining`` while ``/livez``
stays 200, and the requests already held (reading their body, queued, running) go on; once none is left,
or ``timeout_s`` after the drain began, it returns, the jobs still open cancelled first (they stop at their
next denoising step and are answered 503). The listener stays open during the drain, so a load balancer
that has not yet seen ``/readyz`` fail still gets an answer rather than a refused connection; once the
drain returns the server closes it and exits 0.

``run_uvicorn`` is ``asymvq serve``'s uvicorn with that drain on the first SIGTERM/SIGINT (uvicorn's own
would close the listener at once, cut the requests still open at its timeout without an answer, and
re-raise the signal, so the process ended by SIGTERM, not with 0). A second signal ends it at once, open
connections cut, by that signal (uvicorn's forced exit).
"""
from __future__ import annotations

import asyncio
import gc
import logging
import signal

from .limits import DRAIN_CANCEL_GRACE_S

log = logging.getLogger("asymvq.serve.drain")
DRAINING = "server draining"  # Ticket.reason of a job cancelled at the drain's bound (answered 503)
POLL_S = 0.05


class Drain:
    """The drain of one HTTP surface (``asymvq.serve.server.build_app``): ``in_progress()`` counts the requests it
    holds, ``cancel_all(reason)`` cancels their jobs. Touched only on the event loop's thread."""

    def __init__(self, timeout_s: float, in_progress, cancel_all):
        self.timeout_s = timeout_s
        self.in_progress, self.cancel_all = in_progress, cancel_all
        self.draining = False
        self._task: asyncio.Future | None = None

    def run(self) -> asyncio.Future:
        """Start draining (once; later calls return the same future): resolves to {"waited_s", "cancelled"}."""
        if self._task is None:
            self.draining = True
            self._task = asyncio.ensure_future(self._run())
        return self._task

    async def _run(self) -> dict:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        held = self.in_progress()
        log.info("draining: new requests answered 503; %d in progress may take %g s", held, self.timeout_s)
        while self.in_progress() and loop.time() - t0 < self.timeout_s:
            await asyncio.sleep(POLL_S)
        cancelled = 0
        if self.in_progress():
            cancelled = self.cancel_all(DRAINING)
            log.warning("drain: %d requests still open after %g s: their jobs are cancelled (503)", cancelled,
                        self.timeout_s)
            # a cancelled job stops at its next denoising step; give its answer that long to go out
            end = loop.time() + DRAIN_CANCEL_GRACE_S
            while self.in_progress() and loop.time() < end:
                await asyncio.sleep(POLL_S)
        waited = loop.time() - t0
        log.info("drained in %.2f s (%d cancelled, %d still open)", waited, cancelled, self.in_progress())
        return {"waited_s": round(waited, 3), "cancelled": cancelled, "left": self.in_progress()}


def run_uvicorn(app, **config) -> None:
    """``uvicorn.run(app, **config)`` whose first SIGTERM or SIGINT drains ``app.state.drain`` before uvicorn's own
    shutdown (bounded by ``DRAIN_CANCEL_GRACE_S`` then: nothing should be left open by that time), and returns
    rather than re-raising the signal."""
    import uvicorn  # defers the server extra

    drain: Drain = app.state.drain

    class DrainingServer(uvicorn.Server):
        asked = False

        def handle_exit(self, sig, frame):
            if self.asked:  # a second signal: out now, open connections cut, the signal re-raised (uvicorn's own)
                super().handle_exit(sig, frame)
                self.should_exit = self.force_exit = True
                return
            self.asked = True
            log.info("%s: draining", signal.Signals(sig).name)

        async def on_tick(self, counter: int) -> bool:
            stop = await super().on_tick(counter)
            if self.asked:  # the drain task runs on this loop; uvicorn's shutdown once it is done
                return stop or drain.run().done()
            return stop

    server = DrainingServer(uvicorn.Config(app, timeout_graceful_shutdown=DRAIN_CANCEL_GRACE_S, **config))
    server.run()
    # what is left is the interpreter's exit, whose garbage collection over every object torch, diffusers and
    # transformers made took 4 s here (half the drain's budget); nothing there needs collecting, so skip it
    gc.freeze()
