"""Prometheus metrics of the HTTP front ends (``asymvq serve`` and ``asymvq serve --ray``), served at ``GET /metrics``.

Each app owns its registry (two apps in one process never collide). The series:

- ``asymvq_requests_total{status}``: ``POST /v1/inpaint`` answers by HTTP status.
- ``asymvq_stage_seconds{stage}`` (histogram): ``request`` (the whole request, parse to PNG), each pipeline
  span of ``Server-Timing`` (``text_encode``, ``vae_encode``, ``unet_step``, ``scheduler_step``,
  ``decode``; summed over the steps of the batch the request ran in) and, on Ray, ``denoise_stage`` and
  ``decode_stage`` (the round trip to each deployment: queue, batch wait, transfer and compute).
- ``asymvq_batch_size{stage}`` (histogram): per request, the size of the model batch it ran in
  (``pipeline`` is always 1 for the single-process server; ``denoise`` and ``decode`` on Ray).
- ``asymvq_queue_depth{stage}`` (gauge): requests this front end has waiting on, or running in, a stage
  (``pipeline`` / ``ingress``: from the moment the request's body starts).
- ``asymvq_retries_total{stage}`` (Ray): stage calls that met a lost replica and were run once more.

Status 499 in ``asymvq_requests_total`` is a client that closed the connection before its request was read
(nginx's convention): counted apart from the server's own errors (500).
"""
from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 60.0, 120.0, 300.0)
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64)


class ServerMetrics:
    """The counters, histograms and gauges of one HTTP app, in a registry of its own."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self):
        self.registry = CollectorRegistry()
        self.requests = Counter("asymvq_requests", "POST /v1/inpaint answers by HTTP status", ["status"],
                                registry=self.registry)
        self.stage_seconds = Histogram("asymvq_stage_seconds", "Seconds per request in each stage", ["stage"],
                                       buckets=LATENCY_BUCKETS, registry=self.registry)
        self.batch_size = Histogram("asymvq_batch_size", "Per request: jobs in the model batch it ran in", ["stage"],
                                    buckets=BATCH_BUCKETS, registry=self.registry)
        self.retries = Counter("asymvq_retries", "Stage calls retried once after meeting a lost replica (Ray)",
                               ["stage"], registry=self.registry)
        self.queue_depth = Gauge("asymvq_queue_depth", "Requests waiting on or running in a stage", ["stage"],
                                 registry=self.registry)

    def render(self) -> bytes:
        return generate_latest(self.registry)


def parse_metrics(text: str) -> dict[tuple[str, tuple], float]:
    """Prometheus text -> {(sample name, sorted label items): value}: what tests and benchmarks read back."""
    from prometheus_client.parser import text_string_to_metric_families

    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}
