"""The ``asymvq`` command line, one front end: ``app`` (profile, inpaint, decode, serve) and
``export`` (``asymvq export``). It uses the orchestration (``asymvq.pipeline``, ``asymvq.profiling``)
and starts the servers of ``asymvq.serve`` only inside ``asymvq serve``, never importing them here."""
from __future__ import annotations

from .app import app, main, parse_size

__all__ = ["app", "main", "parse_size"]
