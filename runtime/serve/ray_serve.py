"""``asymvq serve --ray``: the inpainting HTTP API on Ray Serve, one deployment per stage (docs/server.md).

The graph::

    HTTP -> ingress (parse + check the form: asymvq.serve.http_form; the FastAPI surface of asymvq.serve.server)
              -> denoise (CLIP, VAE encoder, UNet loop, scheduler; @serve.batch)
              -> decode  (asymmetric decoder with latents, image and mask, PNG, Pre_error; @serve.batch)

Each stage replica builds its pipeline in its constructor from the same ``PipelineSource`` as ``asymvq serve``
(``asymvq.pipeline.source``: a preset, a diffusers folder + decoder, or an engines directory) and
keeps only the engines its stage runs. Both stages batch with ``@serve.batch``: a batch is split into
groups that can share one model call (``asymvq.serve.batching.batch_key``: size, steps, scheduler, guidance
on/off, strength, decoder); each job keeps its own seed, so its image equals the single-process one. With
``--decode-region`` the decode stage groups a batch by mask box as well (``batching.decode_key``): each job gets
the region it gets alone and its ``X-Asymvq-Decode-Region`` header.

Here: the application from a ``RayServeConfig`` (``asymvq.serve.ray_config``) and how the CLI runs it. The
deployments' classes: ``asymvq.serve.ray_stages`` (denoise, decode) and ``asymvq.serve.ray_ingress``; a local
Ray on 127.0.0.1 only: ``asymvq.serve.ray_loopback``.

``ray_app(...)`` returns the Serve application (for ``serve.run``, ``serve run`` or KubeRay);
``build(args)`` is the same as an application builder (``serve run asymvq.serve.ray_serve:build preset=tiny``);
``serve_forever(...)`` is what the CLI runs. Ray is imported only in these modules (the ``ray`` extra).
"""
from __future__ import annotations

import dataclasses
import logging
import os
import signal
import time

import ray
from ray import serve

from ..pipeline.source import PipelineSource
from .limits import DRAIN_CANCEL_GRACE_S
from .ray_config import RayServeConfig
from .ray_ingress import Ingress
from .ray_loopback import LOOPBACK, loopback_only
from .ray_stages import DecodeStage, DenoiseStage

log = logging.getLogger("asymvq.serve.ray_serve")
GRACE_LOOP_S = 0.5  # Serve's graceful_shutdown_wait_loop_s of every deployment
APP_NAME = "asymvq"


# -- the application ----------------------------------------------------------------------------
# The classes stay importable under their own names (Ray pickles them by reference, not by value
# with whatever batch-queue state this process holds); the deployments wrap them.
DENOISE = serve.deployment(DenoiseStage, name="denoise")
DECODE = serve.deployment(DecodeStage, name="decode")
INGRESS = serve.deployment(serve.ingress()(Ingress), name="ingress")


def _actor_options(cpus: float, gpus: float, resources: dict | None) -> dict:
    options = {"num_cpus": cpus}
    if gpus:
        options["num_gpus"] = gpus
    if resources:
        options["resources"] = dict(resources)
    return options


def ray_app(config: RayServeConfig | None = None, **kwargs):
    """The Serve application (ingress -> denoise -> decode), for ``serve.run`` or a RayService.

    ``ray_app(preset="tiny", max_batch=8)`` (``RayServeConfig.from_options``) or ``ray_app(RayServeConfig(...))``."""
    if config is not None and kwargs:
        raise ValueError("ray_app: pass a RayServeConfig or keyword arguments, not both")
    cfg = config or RayServeConfig.from_options(**kwargs)
    ongoing = 2 * cfg.max_batch  # a full batch computing and the next one gathering
    # Serve's graceful shutdown of each replica (serve.shutdown, a redeploy, a scale-down): it takes no new
    # requests and waits for its open ones, checking every half second (Serve's default 2 s made an idle
    # graph's shutdown 2 s longer per deployment), at most shutdown_timeout_s
    grace = dict(graceful_shutdown_timeout_s=cfg.shutdown_timeout_s, graceful_shutdown_wait_loop_s=GRACE_LOOP_S)
    denoise = DENOISE.options(
        num_replicas=cfg.denoise_replicas, max_ongoing_requests=ongoing, **grace,
        ray_actor_options=_actor_options(cfg.cpus_per_denoise, cfg.gpus_per_denoise, cfg.denoise_resources),
    ).bind(cfg)
    decode = DECODE.options(
        num_replicas=cfg.decode_replicas, max_ongoing_requests=ongoing, **grace,
        ray_actor_options=_actor_options(cfg.cpus_per_decode, cfg.gpus_per_decode, cfg.decode_resources),
    ).bind(cfg)
    return INGRESS.options(max_ongoing_requests=max(100, cfg.max_queue + 8), **grace,
                           ray_actor_options={"num_cpus": 0}).bind(denoise, decode, cfg)


def build(args: dict):
    """Application builder for ``serve run asymvq.serve.ray_serve:build key=value ...`` and RayService ``args``:
    the ``PipelineSource`` and ``RayServeConfig`` field names, strings converted to the fields' types."""
    fields = {f.name: f for cls in (PipelineSource, RayServeConfig) for f in dataclasses.fields(cls)
              if f.name != "source"}
    unknown = sorted(set(args) - set(fields))
    if unknown:
        raise ValueError(f"args: unknown {unknown}, expected names among {sorted(fields)}")
    typed = {}
    for name, value in args.items():
        kind = fields[name].type
        if isinstance(value, str) and "int" in kind:
            value = int(value)
        elif isinstance(value, str) and "float" in kind:
            value = float(value)
        typed[name] = value
    return ray_app(RayServeConfig.from_options(**typed))


class _Stop(Exception):
    """The first SIGTERM or SIGINT of ``serve_forever``."""


def _drain(cfg: RayServeConfig, why: str) -> None:
    """Drain the ingress replica (the ingress is one replica: a handle call reaches it) and log what it did."""
    log.warning("%s: draining (at most %g s), then shutting Serve down", why, cfg.shutdown_timeout_s)
    try:
        done = serve.get_app_handle(APP_NAME).drain.remote().result(
            timeout_s=cfg.shutdown_timeout_s + DRAIN_CANCEL_GRACE_S + 10)
        log.warning("drained in %.2f s: %d cancelled, %d still open", done["waited_s"], done["cancelled"], done["left"])
    except Exception as exc:  # noqa: BLE001 - no graph yet (a signal during startup) or the ingress gone: shut down anyway
        log.warning("drain skipped: %s: %s", type(exc).__name__, exc)


def serve_forever(cfg: RayServeConfig, *, host: str = "127.0.0.1", port: int = 8000, address: str | None = None,
                  ready=None) -> None:
    """Start (or join, with ``address``) Ray, deploy the graph with HTTP on ``host:port``, serve until
    interrupted, then shut Serve (and a Ray started here) down. ``ready(url)`` is called once serving.

    The first SIGTERM or SIGINT drains the ingress (``Ingress.drain``: new requests 503, open ones finish for
    ``cfg.shutdown_timeout_s``, then are cancelled) before ``serve.shutdown()``, and the function returns
    (``asymvq serve --ray`` exits 0); a second one skips what is left of the drain (KeyboardInterrupt)."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    started = not ray.is_initialized()
    if started:
        if address is None:
            loopback_only()
        # "local": a new Ray of its own, never one a `ray start` on this machine left behind
        ray.init(address=address or "local", include_dashboard=False, logging_level=logging.WARNING,
                 log_to_driver=False, **({"_node_ip_address": LOOPBACK} if address is None else {}))
    def stop(signum, frame):  # SIGTERM (Kubernetes, systemd, kill) and Ctrl-C: drain, then the finally below
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, hurry)
        raise _Stop(signal.Signals(signum).name)

    def hurry(signum, frame):
        raise KeyboardInterrupt

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, stop)
    try:
        serve.start(http_options={"host": host, "port": port})
        serve.run(ray_app(cfg), name=APP_NAME, route_prefix="/")
        url = f"http://{host}:{port}"
        if ready is not None:
            ready(url)
        while True:
            time.sleep(3600)
    except _Stop as why:
        _drain(cfg, str(why))
    finally:
        try:
            serve.shutdown()
        finally:
            if started:
                ray.shutdown()
