"""What a back end hands the HTTP surface for one job, and the pieces of it both back ends compute the same way
(the single-process runner, ``asymvq.serve.runner``, and Ray Serve's stages, ``asymvq.serve.ray_stages``).

Standard library and PIL only: a Ray stage replica builds these without the HTTP surface.
"""
from __future__ import annotations

import io
from dataclasses import dataclass, field

from ..pipeline.decode_modes import NOTE_REGION

REGION_HEADER = "X-Asymvq-Decode-Region"  # what a job's region decode took and its statistics (RegionChoice.describe())


@dataclass
class JobResult:
    """What a back end returns for one parsed job (``asymvq.serve.http_form.parse_job``)."""

    png: bytes
    pre_error: float
    total_ms: float  # X-Asymvq-Latency-ms
    stages: dict[str, float]  # Server-Timing, ms
    batches: dict[str, int] = field(default_factory=dict)  # stage -> size of the batch the job ran in
    headers: dict[str, str] = field(default_factory=dict)  # extra response headers


def region_headers(timer) -> dict[str, str]:
    """``REGION_HEADER`` with what the decode ``timer`` saw took (the box, or why the whole image); {} without a region
    (both servers: the single-process runner and the Ray decode stage)."""
    choice = timer.notes.get(NOTE_REGION)
    return {REGION_HEADER: choice.describe()} if choice is not None else {}


def stage_ms(timer) -> dict[str, float]:
    """The ``timer``'s spans summed by name (ms): a job's Server-Timing stages."""
    stages: dict[str, float] = {}
    for name, ms in timer.collect():
        stages[name] = stages.get(name, 0.0) + ms
    return stages


def png_bytes(image) -> bytes:
    """A PIL image as the PNG a job answers with."""
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()
