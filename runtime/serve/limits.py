"""The HTTP servers' transport limits and deadlines, one place for ``asymvq serve``, ``--ray`` and their CLI.

Standard library only: the CLI reads the defaults for its ``--help`` without the server extras.
What a request's values may be is ``asymvq.pipeline.job_rules``; these bound the request itself.
"""
from __future__ import annotations

MAX_BODY_BYTES = 32 << 20  # a body past this is 413, refused as soon as it passes (Content-Length can lie)
MAX_HEADER_BYTES = 16 << 10  # request line + headers; more is 431 before any route runs
BODY_TIMEOUT_S = 60.0  # the whole body must arrive within this, or 408: a stalled upload holds its place no longer
REQUEST_TIMEOUT_S = 600.0  # a request's deadline from its arrival (X-Asymvq-Timeout-s asks for less): past it, 504
SHUTDOWN_TIMEOUT_S = 30.0  # after SIGTERM, requests still open this long are cancelled (uvicorn; Serve's replicas)
MAX_QUEUE = 8  # `asymvq serve`: requests held at once, from the moment their body starts; more are 503
RAY_MAX_QUEUE = 64  # the same for one Ray Serve ingress replica (batches need requests waiting)
RETRY_TIMEOUT_S = 60.0  # Ray: how long the one retry of a job that met a lost replica may wait, else 503
MAX_N = 4  # /v1/images/edits: most images one request asks for (OpenAI's n); each is one full job
CLIENT_CLOSED = 499  # nginx's status for "the client closed the connection": counted apart from the server's errors
