"""``asymvq serve``: the HTTP server of ``asymvq.serve`` in this process, or on Ray Serve with ``--ray``.

The one place the CLI reaches the other front end: inside the command, through imports that defer
the server and ray extras, and for the transport limits' defaults of ``--help`` (``asymvq.serve.limits``,
standard library only), and the drain that runs its uvicorn (``asymvq.serve.drain``); .importlinter names
these edges. Registered on the main ``app`` by ``asymvq.cli.app``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..models.devices import DTYPE_HELP
from ..models.extras import missing_extra
from ..pipeline.decode_modes import cli_region_options
from ..pipeline.source import PipelineSource
from ..serve.limits import BODY_TIMEOUT_S, MAX_HEADER_BYTES, MAX_N, MAX_QUEUE, RAY_MAX_QUEUE, REQUEST_TIMEOUT_S, SHUTDOWN_TIMEOUT_S
from .options import (
    BACKEND_HELP,
    DECODE_REGION_HELP,
    DECODER_HELP,
    MARGIN_OPTION,
    MODEL_HELP,
    PRECISION_HELP,
    PRESET_HELP,
    REGION_STATS_OPTION,
    SCHEDULER_DEFAULT_HELP,
    log_to_stderr,
)


def serve(
    model: Optional[Path] = typer.Option(None, help=MODEL_HELP),
    engines: Optional[Path] = typer.Option(None, help="Or an engines directory from `asymvq export`."),
    decoder: Optional[Path] = typer.Option(None, help=DECODER_HELP),
    preset: Optional[str] = typer.Option(None, help=PRESET_HELP + " Default: tiny when neither --model nor "
                                         "--engines is given."),
    scheduler: Optional[str] = typer.Option(None, help="Default scheduler of requests that name none: "
                                            + SCHEDULER_DEFAULT_HELP),
    device: str = typer.Option("cpu", help="cpu or cuda."),
    dtype: str = typer.Option("auto", help=DTYPE_HELP),
    host: str = typer.Option("127.0.0.1", help="Address to listen on (0.0.0.0 exposes it to the network)."),
    port: int = typer.Option(8000, help="TCP port."),
    max_pixels: int = typer.Option(1024 * 1024, help="Largest image accepted, in pixels (W x H)."),
    max_steps: int = typer.Option(150, help="Largest `steps` accepted."),
    max_n: int = typer.Option(MAX_N, help="Most images one POST /v1/images/edits may ask for (OpenAI's `n`)."),
    max_queue: Optional[int] = typer.Option(None, help="Requests held at once, from the moment their body starts "
                                            "(reading, parsing, queued, running); more are answered 503 "
                                            f"(default: {MAX_QUEUE}, with --ray {RAY_MAX_QUEUE})."),
    body_timeout: float = typer.Option(BODY_TIMEOUT_S, help="Seconds a request's whole body may take to arrive, else 408."),
    request_timeout: float = typer.Option(REQUEST_TIMEOUT_S, help="Seconds a request may take from its arrival, else "
                                          "504 and its job stops (a request's X-Asymvq-Timeout-s header may ask for less)."),
    shutdown_timeout: float = typer.Option(SHUTDOWN_TIMEOUT_S, help="Drain: after SIGTERM or Ctrl-C new requests are "
                                           "503 and /readyz fails; open requests may take this many seconds to "
                                           "finish before their jobs are cancelled (503); then exit 0."),
    ray: bool = typer.Option(False, "--ray", help="Serve on Ray Serve: ingress, denoise and decode deployments with "
                             "dynamic batching (the `ray` extra; docs/server.md)."),
    address: Optional[str] = typer.Option(None, help="--ray: join this Ray cluster (auto, ray://host:10001); "
                                          "default: start a local Ray."),
    denoise_replicas: int = typer.Option(1, help="--ray: replicas of the denoise stage (CLIP, VAE encoder, UNet)."),
    decode_replicas: int = typer.Option(1, help="--ray: replicas of the decode stage (asymmetric decoder)."),
    gpus_per_denoise: float = typer.Option(0.0, help="--ray: GPUs per denoise replica (fractions share a GPU)."),
    gpus_per_decode: float = typer.Option(0.0, help="--ray: GPUs per decode replica."),
    cpus_per_denoise: float = typer.Option(1.0, help="--ray: CPUs per denoise replica (also its torch threads)."),
    cpus_per_decode: float = typer.Option(1.0, help="--ray: CPUs per decode replica (also its torch threads)."),
    max_batch: int = typer.Option(8, help="--ray: most requests in one batch, per stage."),
    batch_wait_ms: float = typer.Option(20.0, help="--ray: how long a stage waits to fill a batch."),
    backend: Optional[str] = typer.Option(None, help=BACKEND_HELP),
    precision: Optional[str] = typer.Option(None, help=PRECISION_HELP),
    decode_region: Optional[str] = typer.Option(None, "--decode-region", help=DECODE_REGION_HELP + " Every job's decode, "
                                                "also with --ray; each answer's X-Asymvq-Decode-Region header says "
                                                "what it decoded."),
    margin: Optional[int] = MARGIN_OPTION,
    region_stats: Optional[str] = REGION_STATS_OPTION,
):
    """Serve POST /v1/inpaint, POST /v1/images/edits (OpenAI's image edits), GET /healthz and GET /metrics over
    HTTP (docs/server.md) for a pipeline of any family (SD 1.x, SDXL, FLUX.1 Fill): one request at a time in this
    process, or with --ray on Ray Serve (a stage per deployment, dynamic batching)."""
    source = PipelineSource.serving(preset=preset, model=model, decoder=decoder, engines=engines, device=device,
                                    dtype=dtype, scheduler=scheduler, backend=backend, precision=precision)
    decode_options = cli_region_options(decode_region, margin, region_stats)  # every job's, on both servers
    if ray:
        return _serve_ray(source, locals())
    if address is not None:
        raise ValueError("--address: joins a Ray cluster; add --ray")

    try:
        import uvicorn  # noqa: F401 - the server extra, checked before minutes of model loading

        from ..serve.drain import run_uvicorn  # defers the server extra
        from ..serve.server import create_app  # defers the server extra (fastapi)
    except ImportError as e:
        raise missing_extra("server", "asymvq serve", e) from None

    _server_log()
    app_ = create_app(source, max_pixels=max_pixels, max_steps=max_steps, max_n=max_n, max_queue=max_queue or MAX_QUEUE,
                      body_timeout_s=body_timeout, request_timeout_s=request_timeout, shutdown_timeout_s=shutdown_timeout,
                      decode_options=decode_options)
    # h11, not httptools: h11 bounds what it buffers of a request line and headers (httptools takes a
    # 1 MB header); the app answers 431 past MAX_HEADER_BYTES, h11 drops the connection past 4x that.
    # SIGTERM drains (asymvq.serve.drain): 503 to new requests, open ones finish for --shutdown-timeout, exit 0
    run_uvicorn(app_, host=host, port=port, workers=1, http="h11", h11_max_incomplete_event_size=4 * MAX_HEADER_BYTES)


def _server_log() -> None:
    """The server's own lines (client closes, cancelled jobs, tracebacks of 500s) on stderr, beside uvicorn's."""
    log_to_stderr("asymvq.serve", "%(levelname)s:     %(name)s: %(message)s")


RAY_OPTIONS = ("denoise_replicas", "decode_replicas", "gpus_per_denoise", "gpus_per_decode", "cpus_per_denoise",
               "cpus_per_decode", "max_batch", "batch_wait_ms", "max_pixels", "max_steps", "max_n", "decode_region", "margin",
               "region_stats")


def _serve_ray(source: PipelineSource, opts: dict) -> None:
    """``asymvq serve --ray``: the same HTTP API on Ray Serve (asymvq.serve.ray_serve)."""
    try:
        from ..serve.ray_serve import RayServeConfig, serve_forever  # defers the ray extra
    except ImportError as e:
        raise missing_extra("ray", "asymvq serve --ray", e) from None
    cfg = RayServeConfig(source=source, **{k: opts[k] for k in RAY_OPTIONS},
                         **({"max_queue": opts["max_queue"]} if opts["max_queue"] is not None else {}),
                         body_timeout_s=opts["body_timeout"], request_timeout_s=opts["request_timeout"],
                         shutdown_timeout_s=opts["shutdown_timeout"])
    serve_forever(cfg, host=opts["host"], port=opts["port"], address=opts["address"],
                  ready=lambda url: typer.echo(f"asymvq serve --ray: serving on {url} (Ctrl-C stops)"))


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)
