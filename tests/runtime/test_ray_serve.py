"""asymvq serve --ray: the deployment graph (Serve's local testing mode) and one end-to-end run on a real local Ray.

Skipped only when the `ray` extra is missing (`make test` installs it through `dev`).
"""
from __future__ import annotations

import base64
import io
import json
import os
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import PIL.Image
import pytest

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
serve = pytest.importorskip("ray.serve", reason="the ray extra is not installed")
pytest.importorskip("fastapi")
import httpx  # noqa: E402
import ray  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402

from asymvq.pipeline.inpaint_run import run_inpaint  # noqa: E402
from asymvq.pipeline.source import PipelineSource  # noqa: E402
from asymvq.serve.metrics import parse_metrics  # noqa: E402
from asymvq.serve.ray_serve import RayServeConfig, build, ray_app  # noqa: E402
from asymvq.serve.server import create_app  # noqa: E402

LIMITS = dict(max_pixels=64 * 64, max_steps=20)
SIZES = ((32, 32), (48, 32))  # (W, H): two sizes, never in one batch


def png(img, fmt="PNG") -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def picture(w: int, h: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    source = PIL.Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    hole = np.zeros((h, w), np.uint8)
    hole[h // 4: 3 * h // 4, w // 4: 3 * w // 4] = 255
    return source, PIL.Image.fromarray(hole)


def job(seed: int, size=SIZES[0], **kw) -> dict:
    source, hole = picture(*size)
    return {**dict(source=source, hole=hole, prompt=f"a red sofa {seed % 3}", negative_prompt=None, steps=2,
                   guidance=7.5, seed=seed, strength=1.0, scheduler=None), **kw}


def reference_png(pipe, j: dict) -> np.ndarray:
    run = run_inpaint(pipe, j["source"], j["hole"], j["prompt"], negative_prompt=j["negative_prompt"], steps=j["steps"],
                      guidance=j["guidance"], strength=j["strength"], seed=j["seed"], scheduler=j["scheduler"])
    return np.asarray(run.images[0], np.int16)


def pixels(data: bytes) -> np.ndarray:
    return np.asarray(PIL.Image.open(io.BytesIO(data)).convert("RGB"), np.int16)


# -- the graph in Serve's local testing mode (one process, no Ray cluster) -----------------------
@pytest.fixture(scope="module")
def local_graph():
    # @serve.batch asks for the replica context only to warn that max_batch_size exceeds
    # max_ongoing_requests, and local testing mode has none (RayServeException): skip that warning only.
    from ray.serve.batching import _BatchQueue

    mp = pytest.MonkeyPatch()
    mp.setattr(_BatchQueue, "_warn_if_max_batch_size_exceeds_max_ongoing_requests", lambda self: None)
    handle = serve.run(ray_app(preset="tiny", dtype="fp32", batch_wait_ms=200, **LIMITS), name="asymvq-local", route_prefix=None,
                       _local_testing_mode=True)
    yield handle
    mp.undo()


def test_graph_batches_jobs_and_each_keeps_its_single_process_image(local_graph, tiny_pipe):
    jobs = [job(s, SIZES[s % 2], guidance=7.5 if s % 3 else 4.0) for s in range(6)]
    results = [r.result(timeout_s=120) for r in [local_graph.run_job.remote(j) for j in jobs]]
    for j, res in zip(jobs, results):
        diff = np.abs(pixels(res.png) - reference_png(tiny_pipe, j))
        assert diff.max() <= 1, (j["seed"], diff.max())
        assert {"text_encode", "vae_encode", "unet_step", "scheduler_step", "decode", "denoise_stage",
                "decode_stage"} <= set(res.stages)
    sizes = [res.batches["denoise"] for res in results]
    assert max(sizes) > 1 and all(res.batches["denoise"] <= 3 for res in results), sizes  # two sizes: split
    expected = run_inpaint(tiny_pipe, jobs[0]["source"], jobs[0]["hole"], jobs[0]["prompt"], steps=2, seed=0,
                           guidance=4.0).pre_error
    assert results[0].pre_error == pytest.approx(expected, rel=1e-4, abs=1e-4)


STREAMED: list = []


def _streamed(event):  # by reference: Serve's local testing mode copies a call's arguments
    STREAMED.append(event)


def test_graph_streams_a_jobs_progress_through_the_denoise_stage(local_graph, tiny_pipe):
    """A streamed job (its preview schedule in the job) comes through the denoise stage's streaming handle: every
    step's event, previews on the schedule's steps, and the image it gets unstreamed."""
    events = STREAMED
    events.clear()
    item = job(7, steps=3, preview=("every", 1))
    res = local_graph.run_job.remote(item, None, _streamed).result(timeout_s=120)
    assert [(e["step"], e["total"]) for e in events] == [(1, 3), (2, 3), (3, 3)]
    assert [e["preview"].shape for e in events if "preview" in e] == [(4, 4, 3)] * 2  # not the last step's
    assert np.abs(pixels(res.png) - reference_png(tiny_pipe, item)).max() <= 1


def test_graph_a_streamed_job_whose_caller_leaves_stops_at_its_next_step(local_graph, monkeypatch):
    """The ingress's call cancelled mid-stream (what Serve's proxy does when the client leaves): the denoise
    stage's job marks itself left and its batch, all of whose callers left, stops at its next step."""
    import asymvq.serve.ray_stages as rs
    from asymvq.pipeline.inpaint_pipeline import JobCancelled

    stopped, real = [], rs.denoise_jobs

    def recording(*args, **kwargs):
        try:
            return real(*args, **kwargs)
        except JobCancelled as exc:
            stopped.append(str(exc))
            raise

    monkeypatch.setattr(rs, "denoise_jobs", recording)
    STREAMED.clear()
    response = local_graph.run_job.remote(job(8, size=(64, 64), steps=150, preview=("every", 0)), None, _streamed)
    deadline = time.monotonic() + 60
    while not STREAMED and time.monotonic() < deadline:
        time.sleep(0.01)
    assert STREAMED, "no progress event"
    response.cancel()
    while not stopped and time.monotonic() < deadline:
        time.sleep(0.01)
    assert stopped and "of 150" in stopped[0], stopped
    assert int(stopped[0].split("before denoising step ")[1].split()[0]) < 150
    assert local_graph.run_job.remote(job(9)).result(timeout_s=60).png  # and the stage serves the next job


def test_graph_errors_are_the_pipelines_and_health_comes_from_the_stages(local_graph):
    with pytest.raises(ValueError, match=r"strength: expected a value that leaves at least one of the 2 denoising steps"):
        local_graph.run_job.remote(job(1, strength=0.1)).result(timeout_s=120)
    health = local_graph.health.remote().result(timeout_s=60)
    assert health["source"] == "preset:tiny" and health["decoders"] == ["decoder", "decoder-plain"]
    assert health["scheduler"] == "DDIMScheduler" and health["max_steps"] == 20
    assert health["ray"]["max_batch"] == 8


REGION = {"region": "mask", "margin": 0}


@pytest.fixture(scope="module")
def local_region_graph():
    """The tiny graph with --decode-region mask --margin 0; a batch of 3 fills at once (max_batch 3), else waits 2 s."""
    from ray.serve.batching import _BatchQueue

    mp = pytest.MonkeyPatch()
    mp.setattr(_BatchQueue, "_warn_if_max_batch_size_exceeds_max_ongoing_requests", lambda self: None)
    handle = serve.run(ray_app(preset="tiny", dtype="fp32", batch_wait_ms=2000, max_batch=3, decode_region="mask", margin=0,
                               **LIMITS),
                       name="asymvq-region", route_prefix=None, _local_testing_mode=True)
    yield handle
    mp.undo()


def _hole(y0, y1, x0, x1, size=(64, 64)):
    hole = np.zeros(size[::-1], np.uint8)
    hole[y0:y1, x0:x1] = 255
    return PIL.Image.fromarray(hole)


def test_graph_decodes_each_jobs_own_region_in_one_batch(local_region_graph, tiny_pipe, monkeypatch):
    """Three jobs of one decode batch, two mask boxes: one decode call per box (the two jobs of one box together),
    each job's image and X-Asymvq-Decode-Region header those of the single-process server's region decode."""
    import asymvq.serve.ray_stages as rs
    from asymvq.pipeline.decode_modes import NOTE_REGION
    from asymvq.profiling.timing import StageTimer

    batches, calls = [], []
    real_groups, real_decode = rs._run_groups, rs.decode_jobs

    def recording_groups(items, key, run_group):
        if getattr(run_group, "__name__", "") == "_decode":
            batches.append(len(items))
        return real_groups(items, key, run_group)

    def recording_decode(pipe, items, *args, **kwargs):
        calls.append(len(items))
        return real_decode(pipe, items, *args, **kwargs)

    monkeypatch.setattr(rs, "_run_groups", recording_groups)
    monkeypatch.setattr(rs, "decode_jobs", recording_decode)
    holes = [_hole(8, 24, 8, 24), _hole(40, 56, 32, 60), _hole(8, 24, 8, 24)]  # latent boxes 1:3,1:3 / 5:7,4:8
    jobs = [job(s, (64, 64), hole=h) for s, h in zip((1, 2, 3), holes)]
    results = [r.result(timeout_s=120) for r in [local_region_graph.run_job.remote(j) for j in jobs]]
    assert batches == [3] and sorted(calls) == [1, 2]  # one decode batch, a call per box
    assert [res.batches["decode"] for res in results] == [2, 1, 2]
    for j, res in zip(jobs, results):
        timer = StageTimer(tiny_pipe.device)
        run = run_inpaint(tiny_pipe, j["source"], j["hole"], j["prompt"], steps=j["steps"], guidance=j["guidance"],
                          seed=j["seed"], decode_options=REGION, timer=timer)
        assert np.abs(pixels(res.png) - np.asarray(run.images[0], np.int16)).max() <= 1, j["seed"]
        assert res.headers["X-Asymvq-Decode-Region"] == timer.notes[NOTE_REGION].describe()
    assert [res.headers["X-Asymvq-Decode-Region"].split(" (")[0] for res in results] == [
        "box 1:3,1:3", "box 5:7,4:8", "box 1:3,1:3"]
    assert local_region_graph.health.remote().result(timeout_s=60)["decode_options"] == REGION


# per family: 3 jobs (the first two can share one call, the third cannot) and a job the family refuses
FAMILY_JOBS = {
    # SDXL: one guidance value per call, and no negative prompt (zero embeddings) is not the empty one
    "tiny-sdxl": ([dict(guidance=7.5), dict(guidance=7.5), dict(guidance=7.5, negative_prompt="blurry")],
                  dict(scheduler="lms"), "scheduler: expected one of"),
    # FLUX.1 Fill: one guidance value per call, and no negative prompt at all
    "tiny-flux-fill": ([dict(guidance=30.0), dict(guidance=30.0), dict(guidance=10.0)],
                       dict(negative_prompt="blurry", guidance=30.0), "negative_prompt: FLUX.1 Fill has no classifier"),
}


@pytest.fixture(scope="module", params=sorted(FAMILY_JOBS))
def local_family_graph(request):
    """The same graph over tiny-sdxl / tiny-flux-fill, in Serve's local testing mode: its stages build the family's
    pipeline (whole; the decode stage then keeps its decoder only: PipelineSource.build). Not on the real local
    Ray of the end-to-end test: redeploying it there with FLUX.1 Fill cost 29 s more (new replica processes import
    diffusers and build the pipeline), and what crosses processes (jobs, Denoised) is the same as SD's."""
    from ray.serve.batching import _BatchQueue

    mp = pytest.MonkeyPatch()
    mp.setattr(_BatchQueue, "_warn_if_max_batch_size_exceeds_max_ongoing_requests", lambda self: None)
    handle = serve.run(ray_app(preset=request.param, batch_wait_ms=200, **LIMITS), name=f"asymvq-{request.param}",
                       route_prefix=None, _local_testing_mode=True)
    yield request.param, handle
    mp.undo()


def test_graph_stages_run_the_families_and_keep_each_jobs_image(local_family_graph, family_pipes):
    """SDXL / FLUX.1 Fill jobs through DenoiseStage and DecodeStage: batched where one call of the family can take
    them, each job's image its single-process one; the family's rules hold in the stage (the client's error)."""
    preset, graph = local_family_graph
    good, bad, needle = FAMILY_JOBS[preset]
    jobs = [job(s, **kw) for s, kw in enumerate(good)]
    results = [r.result(timeout_s=120) for r in [graph.run_job.remote(j) for j in jobs]]
    for j, res in zip(jobs, results):
        assert np.abs(pixels(res.png) - reference_png(family_pipes[preset], j)).max() <= 1, j["seed"]
    # the stage batched them (its batch: one batch_key); denoise_jobs split the batch into the calls the family takes
    # (else the third job fails: one guidance value per call; or, SDXL, the first two get the empty prompt's embeds)
    assert max(res.batches["denoise"] for res in results) > 1
    with pytest.raises(ValueError, match=needle):
        graph.run_job.remote(job(4, **bad)).result(timeout_s=120)
    health = graph.health.remote().result(timeout_s=60)
    assert health["family"] == family_pipes[preset].rules.name and health["source"] == f"preset:{preset}"


def test_config_and_builder_check_their_arguments():
    assert RayServeConfig().source.preset == "tiny" and RayServeConfig.from_options(model="sd").source.preset is None
    assert RayServeConfig.from_options(model="sd").source == PipelineSource(model="sd")  # one source, one set of rules
    # every replica resolves the default precision on its own node's CPU (--dtype auto); the parity tests
    # here pin fp32, the batching being what they check
    assert RayServeConfig.from_options(preset="tiny").source.dtype == "auto"
    with pytest.raises(ValueError, match="--preset: give either --preset or --model"):
        RayServeConfig.from_options(preset="tiny", model="sd")
    with pytest.raises(ValueError, match="--max-batch: expected a positive integer, got 0"):
        RayServeConfig(max_batch=0)
    with pytest.raises(ValueError, match="--gpus-per-decode: expected a number >= 0"):
        RayServeConfig(gpus_per_decode=-1)
    with pytest.raises(ValueError, match=r"args: unknown \['replicas'\]"):
        build({"replicas": "2"})
    app = build({"preset": "tiny", "max_batch": "4", "batch_wait_ms": "5", "decode_replicas": "2"})
    assert type(app).__name__ == "Application"
    assert RayServeConfig(decode_region="auto", margin=2).decode_options == {"region": "auto", "margin": 2}
    assert RayServeConfig(decode_region="full").decode_options == {} == RayServeConfig().decode_options
    assert RayServeConfig(decode_region="mask", region_stats="lowres").decode_options == {"region": "mask",
                                                                                         "region_stats": "lowres"}
    for kw, message in ((dict(decode_region="box"), "--decode-region: expected 'mask'"),
                        (dict(margin=2), "--margin: only with --decode-region mask or auto"),
                        (dict(region_stats="lowres"), "--region-stats: only with --decode-region mask or auto"),
                        (dict(decode_region="auto", region_stats="low"), "--region-stats: expected one of"),
                        (dict(decode_region="mask", margin=-1), "margin: expected an integer >= 0")):
        with pytest.raises(ValueError, match=message):
            RayServeConfig(**kw)
    assert type(build({"preset": "tiny", "decode_region": "mask", "margin": "1"})).__name__ == "Application"


def test_cli_serve_ray_maps_its_options(monkeypatch, capsys):
    import asymvq.serve.ray_serve as rs
    from asymvq.cli import main

    calls = []
    monkeypatch.setattr(rs, "serve_forever", lambda cfg, **kw: calls.append((cfg, kw)))
    with pytest.raises(SystemExit) as exc:
        main(["serve", "--ray", "--port", "8124", "--decode-replicas", "2", "--max-batch", "4", "--gpus-per-decode",
              "0.5", "--address", "auto"])
    assert (exc.value.code or 0) == 0, capsys.readouterr().err
    cfg, kw = calls[0]
    assert (cfg.source.preset, cfg.decode_replicas, cfg.max_batch, cfg.gpus_per_decode) == ("tiny", 2, 4, 0.5)
    assert kw["host"] == "127.0.0.1" and kw["port"] == 8124 and kw["address"] == "auto"
    assert cfg.decode_options == {}
    with pytest.raises(SystemExit) as exc:
        main(["serve", "--ray", "--decode-region", "auto", "--margin", "2"])
    assert (exc.value.code or 0) == 0, capsys.readouterr().err
    assert calls[1][0].decode_options == {"region": "auto", "margin": 2}
    with pytest.raises(SystemExit) as exc:
        main(["serve", "--ray", "--decode-region", "mask", "--region-stats", "lowres"])
    assert (exc.value.code or 0) == 0, capsys.readouterr().err
    assert calls[2][0].decode_options == {"region": "mask", "region_stats": "lowres"}
    with pytest.raises(SystemExit) as exc:
        main(["serve", "--address", "auto"])
    assert exc.value.code == 1 and "--address: joins a Ray cluster; add --ray" in capsys.readouterr().err


def test_cli_without_the_ray_extra_says_which_extra(monkeypatch, capsys):
    import builtins

    from asymvq.cli import main

    real_import = builtins.__import__

    def no_ray(name, *args, **kwargs):
        if name.endswith("ray_serve") or name.startswith("ray"):
            raise ImportError("No module named 'ray'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    with pytest.raises(SystemExit) as exc:
        main(["serve", "--ray"])
    err = capsys.readouterr().err
    assert exc.value.code == 1 and "pip install 'asymvq[ray]'" in err and err.count("\n") == 1, err


# -- end to end on a real local Ray ----------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _bad_requests():
    source, hole = picture(32, 32)
    small_hole = picture(32, 24)[1]
    fields = {"prompt": "x", "steps": "2"}
    ok = {"image": ("i.png", png(source), "image/png"), "mask": ("m.png", png(hole), "image/png")}
    return [
        ("bad png", dict(files={**ok, "image": ("i.png", png(source)[:50], "image/png")}, data=fields)),
        ("mask size", dict(files={**ok, "mask": ("m.png", png(small_hole), "image/png")}, data=fields)),
        ("steps over", dict(files=ok, data={**fields, "steps": "21"})),
        ("no prompt", dict(files=ok, data={"steps": "2"})),
    ]


def test_end_to_end_on_a_local_ray(tiny_pipe):
    """8 clients, 24 valid requests of two sizes plus malformed ones: images = single-process, 4xx = FastAPI's."""
    t0 = time.monotonic()
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(ray_app(preset="tiny", dtype="fp32", batch_wait_ms=50, **LIMITS), name="asymvq", route_prefix="/")
        started = time.monotonic() - t0

        valid = [job(s, SIZES[s % 2], negative_prompt="blurry" if s % 5 == 0 else None) for s in range(24)]
        bad = _bad_requests()

        def send(item):
            with httpx.Client(timeout=150) as client:
                if isinstance(item, dict):
                    data = {"prompt": item["prompt"], "steps": "2", "seed": str(item["seed"])}
                    if item["negative_prompt"]:
                        data["negative_prompt"] = item["negative_prompt"]
                    files = {"image": ("i.png", png(item["source"]), "image/png"),
                             "mask": ("m.png", png(item["hole"]), "image/png")}
                    return client.post(f"{url}/v1/inpaint", files=files, data=data)
                return client.post(f"{url}/v1/inpaint", **item[1])

        work = valid[:12] + bad[:2] + valid[12:] + bad[2:]
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(send, work))

        fastapi = TestClient(create_app(tiny_pipe, **LIMITS))
        for item, resp in zip(work, answers):
            if isinstance(item, dict):
                assert resp.status_code == 200, resp.text
                diff = np.abs(pixels(resp.content) - reference_png(tiny_pipe, item))
                assert diff.max() <= 1, (item["seed"], diff.max())
                assert "unet_step;dur=" in resp.headers["Server-Timing"]
                assert float(resp.headers["X-Asymvq-Pre-Error"]) >= 0
            else:
                want = fastapi.post("/v1/inpaint", **item[1])
                assert (resp.status_code, resp.json()) == (want.status_code, want.json()), item[0]
                assert 400 <= resp.status_code < 500

        health = httpx.get(f"{url}/healthz").json()
        assert health["source"] == "preset:tiny" and health["max_pixels"] == LIMITS["max_pixels"]
        metrics = parse_metrics(httpx.get(f"{url}/metrics").text)
        assert metrics[("asymvq_requests_total", (("status", "200"),))] == 24
        assert metrics[("asymvq_requests_total", (("status", "400"),))] == 4
        count = metrics[("asymvq_batch_size_count", (("stage", "denoise"),))]
        total = metrics[("asymvq_batch_size_sum", (("stage", "denoise"),))]
        assert count == 24 and total > count, (count, total)  # batches larger than 1 happened
        assert metrics[("asymvq_queue_depth", (("stage", "denoise"),))] == 0
        # the OpenAI endpoint on the same Ray graph: n=2 images, seeds 5 and 6, batched like any two jobs
        item = job(5)
        alpha = np.where(np.asarray(item["hole"]) > 127, 0, 255).astype(np.uint8)
        mask = png(PIL.Image.fromarray(np.dstack([np.zeros(alpha.shape + (3,), np.uint8), alpha]), "RGBA"))
        resp = httpx.post(f"{url}/v1/images/edits", timeout=150, files={"image": ("i.png", png(item["source"])),
                                                                       "mask": ("m.png", mask)},
                          data={"prompt": item["prompt"], "n": "2", "steps": "2", "seed": "5"})
        assert resp.status_code == 200, resp.text
        got = [pixels(base64.b64decode(d["b64_json"])) for d in resp.json()["data"]]
        for seed, image in zip((5, 6), got):
            assert np.abs(image - reference_png(tiny_pipe, {**item, "seed": seed})).max() <= 1
        bad = httpx.post(f"{url}/v1/images/edits", files={"image": ("i.png", png(item["source"]))},
                         data={"prompt": "x", "n": "9"}, timeout=60)
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "mask"
        # a deadline shorter than the job: the ingress cancels its stage call, 504, and the graph keeps serving
        files = {"image": ("i.png", png(item["source"])), "mask": ("m.png", png(item["hole"]))}
        late = httpx.post(f"{url}/v1/inpaint", files=files, data={"prompt": "x", "steps": "20"},
                          headers={"X-Asymvq-Timeout-s": "0.001"}, timeout=60)
        assert late.status_code == 504 and "timeout: expected the job within 0.001 s" in late.json()["error"], late.text
        assert httpx.post(f"{url}/v1/inpaint", files=files, data={"prompt": "x", "steps": "2"}, timeout=60).status_code == 200
        # one streamed request: the denoise stage's progress through Serve's streaming handle and HTTP proxy
        streamed = httpx.post(f"{url}/v1/inpaint", files=files, timeout=60,
                              data={"prompt": item["prompt"], "steps": "3", "seed": "5", "stream": "true",
                                    "preview_every": "1"})
        assert streamed.status_code == 200 and streamed.headers["content-type"].startswith("text/event-stream")
        sse = [(block.split("\n")[0][7:], json.loads(block.split("\n")[1][6:]))
               for block in streamed.text.strip().split("\n\n")]
        assert [n for n, _ in sse] == ["progress", "preview", "progress", "preview", "progress", "result"], sse
        assert all(d["job_id"] == streamed.headers["X-Asymvq-Job-Id"] for _, d in sse)
        image = pixels(base64.b64decode(sse[-1][1]["image"]))
        assert np.abs(image - reference_png(tiny_pipe, {**item, "steps": 3, "seed": 5})).max() <= 1
        print(f"ray e2e: started in {started:.1f} s, mean denoise batch {total / count:.2f}, "
              f"total {time.monotonic() - t0:.1f} s")
    finally:
        serve.shutdown()
        ray.shutdown()
    assert not ray.is_initialized()
    with pytest.raises(httpx.ConnectError):  # the HTTP proxy is gone
        httpx.get(f"{url}/healthz", timeout=5)
