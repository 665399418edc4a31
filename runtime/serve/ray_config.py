"""What ``asymvq serve --ray`` builds its graph from (``RayServeConfig``): the pipeline source, the stages'
replicas, resources and batching, and the HTTP limits of the ingress (docs/server.md).

Plain values only, so the config travels to every replica; no Ray here (``asymvq.serve.ray_serve`` builds the
application from it).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ..pipeline.checks import check_int
from ..pipeline.decode_modes import cli_region_options
from ..pipeline.source import PipelineSource
from .limits import (
    BODY_TIMEOUT_S,
    MAX_BODY_BYTES,
    MAX_N,
    RAY_MAX_QUEUE,
    REQUEST_TIMEOUT_S,
    RETRY_TIMEOUT_S,
    SHUTDOWN_TIMEOUT_S,
)


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
    region_stats: str | None = None  # --region-stats ("box" | "lowres"), with a decode_region

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
        cli_region_options(self.decode_region, self.margin, self.region_stats)  # bad ones fail here, not per request

    @property
    def decode_options(self) -> dict:
        """``decode_region`` / ``margin`` / ``region_stats`` as the pipeline's ``decode_options`` ({} for the whole
        image)."""
        return cli_region_options(self.decode_region, self.margin, self.region_stats)

    @classmethod
    def from_options(cls, **options) -> "RayServeConfig":
        """One flat set of options (``preset="tiny", max_batch=4``): the ``PipelineSource`` fields build the
        source (``PipelineSource.serving``), the rest are this config's."""
        names = PipelineSource.field_names()
        source = PipelineSource.serving(**{k: v for k, v in options.items() if k in names})
        return cls(source=source, **{k: v for k, v in options.items() if k not in names})
