"""The HTTP servers' transport limits and deadlines, one place for ``asymvq serve``, ``--ray`` and their CLI.

Standard library only: the CLI reads the defaults for its ``--help`` without the server extras.
What a request's values may be is ``asymvq.pipeline.job_rules``; these bound the request itself.
"""
from __future__ import annotations

MAX_BODY_BYTES = 32 << 20  # a body past this is 413, refused as soon as it passes (Content-Length can lie)
MAX_HEADER_BYTES = 16 << 10  # request line + headers; more is 431 before any route runs
BODY_TIMEOUT_S = 60.0  # the whole body must arrive within this, or 408: a stalled upload holds its place no longer
REQUEST_TIMEOUT_S = 600.0  # a request's deadline from its arrival (X-Asymvq-Timeout-s asks for less): past it, 504
SHUTDOWN_TIMEOUT_S = 30.0  # after SIGTERM, requests still open this long are cancelled (503): the drain's bound
DRAIN_CANCEL_GRACE_S = 5.0  # then how long their answers may take (a job stops at its next step), before the exit
DRAIN_RETRY_AFTER_S = 2  # Retry-After of the 503s of a draining server (another replica, or this one restarted)
MAX_QUEUE = 8  # `asymvq serve`: requests held at once, from the moment their body starts; more are 503
RAY_MAX_QUEUE = 64  # the same for one Ray Serve ingress replica (batches need requests waiting)
RETRY_TIMEOUT_S = 60.0  # Ray: how long the one retry of a job that met a lost replica may wait, else 503
MAX_N = 4  # /v1/images/edits: most images one request asks for (OpenAI's n); each is one full job
CANCEL_POLL_S = 0.02  # how often a waiting job (for the pipeline, its body, a Ray stage) looks whether it was cancelled
CLIENT_CLOSED = 499  # nginx's status for "the client closed the connection": counted apart from the server's errors
