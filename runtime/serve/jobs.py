"""Jobs in progress, by id: what ``DELETE /v1/jobs/{id}`` and a client's disconnect cancel (docs/server.md).

Every job request gets an id, the client's own ``X-Asymvq-Job-Id`` when it sends one (so that it can cancel
a job whose answer has not come yet) or a fresh one, answered in the same header. Cancelling sets the job's
``threading.Event``: the single-process runner checks it before each denoising step (``InpaintPipeline.denoise``'s
``cancel``) and while it waits for the pipeline; the Ray ingress cancels its stage calls. Either way the
request ends and frees its place in the queue. Touched only on the event loop's thread.
"""
from __future__ import annotations

import asyncio
import re
import threading
import time
import uuid
from dataclasses import dataclass, field

from .http_form import RequestError

JOB_HEADER = "X-Asymvq-Job-Id"
TIMEOUT_HEADER = "X-Asymvq-Timeout-s"  # a request's own deadline, seconds from its arrival; capped by the server's
DEADLINE = "deadline"  # Ticket.reason of a job stopped by its deadline (answered 504)
_ID = re.compile(r"[A-Za-z0-9_.-]{1,64}")
DISCONNECT_POLL_S = 0.02  # how often a running request looks for its client's disconnect


@dataclass
class Ticket:
    id: str
    path: str
    started: float = field(default_factory=time.monotonic)
    event: threading.Event = field(default_factory=threading.Event)
    reason: str = ""

    def cancel(self, reason: str) -> None:
        if not self.event.is_set():
            self.reason = reason
            self.event.set()


class Jobs:
    def __init__(self):
        self._open: dict[str, Ticket] = {}

    def open(self, wanted: str | None, path: str) -> Ticket:
        if wanted is not None and not _ID.fullmatch(wanted):
            raise RequestError(400, f"{JOB_HEADER}: expected 1 to 64 letters, digits or _.-, got {wanted[:80]!r}")
        if wanted in self._open:
            raise RequestError(409, f"{JOB_HEADER}: expected an id no job in progress has, got {wanted!r}")
        ticket = Ticket(wanted or uuid.uuid4().hex, path)
        self._open[ticket.id] = ticket
        return ticket

    def close(self, ticket: Ticket) -> None:
        self._open.pop(ticket.id, None)

    def cancel(self, job_id: str) -> bool:
        ticket = self._open.get(job_id)
        if ticket is None:
            return False
        ticket.cancel("cancelled by DELETE /v1/jobs/" + job_id)
        return True

    def cancel_all(self, reason: str) -> int:
        """Cancel every job in progress (the drain's bound); how many were open."""
        for ticket in self._open.values():
            ticket.cancel(reason)
        return len(self._open)

    def listing(self) -> list[dict]:
        now = time.monotonic()
        return [{"id": t.id, "path": t.path, "age_s": round(now - t.started, 3), "cancelled": t.event.is_set()}
                for t in self._open.values()]


def request_timeout(value: str | None, cap: float) -> float:
    """The request's deadline in seconds: its ``X-Asymvq-Timeout-s`` if it sends one, never more than the server's."""
    if value is None:
        return cap
    try:
        seconds = float(value)
    except ValueError:
        seconds = float("nan")
    if not 0 < seconds < float("inf"):
        raise RequestError(400, f"{TIMEOUT_HEADER}: expected a number of seconds > 0 (at most the server's {cap:g} "
                                f"are used), got {value[:40]!r}")
    return min(seconds, cap)


async def watch_disconnect(request, ticket: Ticket) -> None:
    """Cancel ``ticket`` when the client goes away (Starlette's non-blocking ``is_disconnected``, polled: it reads
    the same on uvicorn and behind Ray Serve's proxy)."""
    while not ticket.event.is_set():
        if await request.is_disconnected():
            ticket.cancel("client closed the connection")
            return
        await asyncio.sleep(DISCONNECT_POLL_S)
