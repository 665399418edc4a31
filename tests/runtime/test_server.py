"""The HTTP server on the tiny preset: same pixels as the library, clear 4xx errors, and it keeps serving."""
from __future__ import annotations

import io
import time

import numpy as np
import PIL.Image
import pytest
import torch

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient

from asymvq.pipeline import InpaintPipeline
from asymvq.pipeline.inpaint_run import run_inpaint
from asymvq.serve.server import create_app

SIZE = 32


def png(img: PIL.Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def source_and_mask(w: int = SIZE, h: int = SIZE) -> tuple[PIL.Image.Image, PIL.Image.Image]:
    rng = np.random.default_rng(0)
    source = PIL.Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    hole = np.zeros((h, w), np.uint8)
    hole[h // 4: 3 * h // 4, w // 4: 3 * w // 4] = 255
    return source, PIL.Image.fromarray(hole)


@pytest.fixture(scope="module")
def pipe():
    return InpaintPipeline.from_preset("tiny")


@pytest.fixture(scope="module")
def client(pipe):
    # small limits so that the "too big" cases stay cheap
    with TestClient(create_app(pipe, max_pixels=64 * 64, max_steps=20, max_body_bytes=1 << 20,
                               source="preset:tiny")) as c:
        yield c


def post(client, *, image=None, mask=None, omit=(), files=None, **data):
    source, hole = source_and_mask()
    parts = {"image": ("image.png", png(source) if image is None else image, "image/png"),
             "mask": ("mask.png", png(hole) if mask is None else mask, "image/png")}
    fields = {"prompt": "a red sofa", "steps": "2", "seed": "3", **data}
    for name in omit:
        parts.pop(name, None)
        fields.pop(name, None)
    return client.post("/v1/inpaint", files={**parts, **(files or {})}, data=fields)


def test_good_request_matches_the_library_call(client, pipe):
    resp = post(client, guidance="5.0", negative_prompt="blurry")
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"] == "image/png"
    out = PIL.Image.open(io.BytesIO(resp.content))
    assert out.format == "PNG" and out.size == (SIZE, SIZE) and out.mode == "RGB"

    source, hole = source_and_mask()
    want = pipe("a red sofa", source, hole, negative_prompt="blurry", num_inference_steps=2, guidance_scale=5.0,
                generator=torch.Generator().manual_seed(3)).images[0]
    diff = np.abs(np.asarray(out, np.int16) - np.asarray(want, np.int16))
    assert diff.max() <= 1, diff.max()
    # a different seed is a different image: the seed really reaches the pipeline
    other = PIL.Image.open(io.BytesIO(post(client, guidance="5.0", negative_prompt="blurry", seed="4").content))
    assert np.abs(np.asarray(other, np.int16) - np.asarray(want, np.int16)).max() > 1

    assert float(resp.headers["X-Asymvq-Latency-ms"]) > 0
    expected_pre = run_inpaint(pipe, source, hole, "a red sofa", negative_prompt="blurry", steps=2, guidance=5.0,
                               seed=3).pre_error
    assert float(resp.headers["X-Asymvq-Pre-Error"]) == pytest.approx(expected_pre, rel=1e-3, abs=1e-3)
    timing = dict(item.split(";dur=") for item in resp.headers["Server-Timing"].split(", "))
    assert {"text_encode", "vae_encode", "unet_step", "scheduler_step", "decode"} <= set(timing)


def test_scheduler_per_request_leaves_the_pipeline_default(client, pipe):
    default = type(pipe.scheduler)
    resp = post(client, scheduler="euler", seed="1")
    assert resp.status_code == 200, resp.text
    assert type(pipe.scheduler) is default  # the request's scheduler did not stick
    source, hole = source_and_mask()
    ref = pipe("a red sofa", source, hole, num_inference_steps=2, generator=torch.Generator().manual_seed(1),
               scheduler="euler").images[0]
    got = PIL.Image.open(io.BytesIO(resp.content))
    assert np.abs(np.asarray(got, np.int16) - np.asarray(ref, np.int16)).max() <= 1


def _bad_cases():
    source, hole = source_and_mask()
    small_hole = source_and_mask(SIZE, 24)[1]
    odd_source, odd_hole = source_and_mask(30, 32)
    big_source, big_hole = source_and_mask(72, 64)
    return [
        ("undecodable", dict(image=b"not an image at all"), 400, "image: expected a PNG or JPEG file"),
        ("truncated", dict(image=png(source)[:60]), 400, "image: expected a complete PNG or JPEG file"),
        ("not png/jpeg", dict(image=png(source, "BMP")), 400, "image: expected a PNG or JPEG file"),
        ("empty mask", dict(mask=b""), 400, "mask: expected a PNG or JPEG file, got an empty file"),
        ("size mismatch", dict(mask=png(small_hole)), 400, "mask: expected the image's size 32x32 (WxH), got 32x24"),
        ("not multiple of 8", dict(image=png(odd_source), mask=png(odd_hole)), 400,
         "image: expected width and height multiples of 8, got 30x32"),
        ("too many pixels", dict(image=png(big_source), mask=png(big_hole)), 413, "image: expected at most 4096 pixels"),
        ("steps zero", dict(steps="0"), 400, "steps: expected a value in [1, 20], got 0"),
        ("steps too many", dict(steps="21"), 400, "steps: expected a value in [1, 20]"),
        ("steps not int", dict(steps="two"), 400, "steps: expected an integer, got 'two'"),
        ("guidance nan", dict(guidance="nan"), 400, "guidance: expected a value in"),
        ("strength", dict(strength="1.5"), 400, "strength: expected a value in (0, 1], got 1.5"),
        ("strength leaves no step", dict(strength="0.1"), 400,
         "strength: expected a value that leaves at least one of the 2 denoising steps"),
        ("scheduler", dict(scheduler="lms"), 400, "scheduler: expected one of ['ddim', 'pndm', 'euler', 'dpm++'], got 'lms'"),
        ("seed", dict(seed="-1"), 400, "seed: expected a value in [0, "),
        ("missing image", dict(omit=("image",)), 400, "image: expected a form field, got none"),
        ("missing mask", dict(omit=("mask",)), 400, "mask: expected a form field, got none"),
        ("missing prompt", dict(omit=("prompt",)), 400, "prompt: expected a form field, got none"),
        ("unknown field", dict(stpes="3"), 400, "stpes: expected a field among"),
        ("prompt too long", dict(prompt="x" * 4097), 400, "prompt: expected at most 4096 bytes of UTF-8 text"),
        ("negative prompt too long", dict(negative_prompt="\u00e9" * 2049), 400, "negative_prompt: expected at most 4096"),
    ]


@pytest.mark.parametrize("case", _bad_cases(), ids=lambda c: c[0])
def test_bad_input_is_a_4xx_naming_the_argument(client, case):
    _, kwargs, status, message = case
    resp = post(client, **kwargs)
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"] == "application/json"
    assert message in resp.json()["error"], resp.json()
    assert "Traceback" not in resp.text


def test_bad_values_are_refused_without_the_pipeline_lock(client):
    """A prompt bomb or a strength that leaves no step is refused at parse time, before the queue: it is
    answered while another request holds the pipeline (here: the test holds its lock)."""
    lock = client.app.state.runner.lock
    with lock:
        t0 = time.monotonic()
        for kwargs, needle in ((dict(prompt="a red sofa " * 90_000), "prompt: expected at most 4096 bytes"),
                               (dict(strength="0.2"), "strength: expected a value that leaves at least one"),
                               (dict(scheduler="lms"), "scheduler: expected one of")):
            resp = post(client, **kwargs)
            assert resp.status_code == 400 and needle in resp.json()["error"], resp.text
        assert time.monotonic() - t0 < 10


def test_a_transport_failure_under_the_body_read_is_a_client_close(client):
    """Whatever the transport raises while the body arrives (Ray Serve's proxy raises its TaskCancelledError
    when the client left) is counted as 499, never a 500 with a traceback."""
    import asyncio

    from asymvq.serve.metrics import parse_metrics

    def count(status):
        return parse_metrics(client.get("/metrics").text).get(("asymvq_requests_total", (("status", status),)), 0)

    before = {s: count(s) for s in ("499", "500")}
    parts = [{"type": "http.request", "body": b"--xyz\r\n", "more_body": True}]

    async def receive():
        if parts:
            return parts.pop()
        raise RuntimeError("the transport went away")

    sent = []

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": "/v1/inpaint", "raw_path": b"/v1/inpaint", "query_string": b"", "root_path": "",
             "headers": [(b"content-type", b"multipart/form-data; boundary=xyz"), (b"host", b"x")],
             "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80)}
    asyncio.run(client.app(scope, receive, send))
    assert sent[0]["status"] == 499
    assert count("499") == before["499"] + 1 and count("500") == before["500"]


def test_transport_errors(client):
    resp = client.post("/v1/inpaint", content=b"{}", headers={"content-type": "application/json"})
    assert resp.status_code == 415 and resp.json()["error"].startswith("Content-Type: expected multipart/form-data")
    big = client.post("/v1/inpaint", files={"image": ("x.png", b"\0" * (1 << 20), "image/png")})
    assert big.status_code == 413 and big.json()["error"].startswith("body: expected at most 1048576 bytes")
    torn = client.post("/v1/inpaint", content=b"--xyz\r\nContent-Disposition: form-data; name=\"prompt\"\r\n\r\nhi",
                       headers={"content-type": "multipart/form-data; boundary=xyz"})
    assert torn.status_code == 400 and torn.json()["error"].startswith("body: expected complete multipart")
    assert client.get("/v1/nothing").status_code == 404 and "error" in client.get("/v1/nothing").json()


def test_internal_error_is_a_500_without_traceback_and_the_server_keeps_serving(client, pipe, monkeypatch, caplog):
    def broken(*args, **kwargs):
        raise RuntimeError("CUDA out of memory: secret internals /home/x")

    with monkeypatch.context() as m:
        m.setattr(pipe, "denoise", broken)
        resp = post(client)
    assert resp.status_code == 500
    assert resp.json() == {"error": "internal error while inpainting (details in the server log)"}
    assert "secret" not in resp.text and "Traceback" not in resp.text
    assert "secret internals" in caplog.text  # ... but the operator sees it
    # after bad and broken requests, a good one still succeeds, and the lock was released
    ok = post(client)
    assert ok.status_code == 200 and PIL.Image.open(io.BytesIO(ok.content)).size == (SIZE, SIZE)
    assert not client.app.state.runner.lock.locked()


def test_jpeg_input_and_healthz(client):
    source, hole = source_and_mask()
    resp = post(client, image=png(source, "JPEG"), mask=png(hole, "JPEG"))
    assert resp.status_code == 200, resp.text
    health = client.get("/healthz")
    assert health.status_code == 200
    assert health.json() == {"status": "ok", "source": "preset:tiny", "family": "sd", "device": "cpu", "dtype": "fp32",
                             "decoders": ["decoder", "decoder-plain"], "scheduler": "DDIMScheduler", "max_pixels": 4096,
                             "max_steps": 20, "max_n": 4}


def test_create_app_rejects_what_it_cannot_serve(pipe):
    with pytest.raises(ValueError, match="pipeline: expected an InpaintPipeline"):
        create_app(lambda: "not a pipeline")
    with pytest.raises(ValueError, match="max_pixels: expected a positive integer"):
        create_app(lambda: pipe, max_pixels=0)
    with pytest.raises(ValueError, match="max_steps: expected a positive integer, got True"):  # a bool is no count
        create_app(lambda: pipe, max_steps=True)


def test_serve_command_builds_the_app_and_runs_uvicorn(monkeypatch, capsys):
    import asymvq.serve.drain as drain
    from asymvq.cli import main

    calls = []
    monkeypatch.setattr(drain, "run_uvicorn", lambda app, **kw: calls.append((app, kw)))  # uvicorn that drains
    with pytest.raises(SystemExit) as exc:
        main(["serve", "--port", "8123", "--max-steps", "7", "--shutdown-timeout", "12"])  # no pipeline: tiny
    assert (exc.value.code or 0) == 0 and len(calls) == 1
    app, kwargs = calls[0]
    assert kwargs == {"host": "127.0.0.1", "port": 8123, "workers": 1, "http": "h11",
                      "h11_max_incomplete_event_size": 65536}
    assert app.state.drain.timeout_s == 12.0  # the drain's bound (tests/runtime/test_server_drain.py)
    health = TestClient(app).get("/healthz").json()
    assert health["source"] == "preset:tiny" and health["max_steps"] == 7

    for argv, needle in ((["serve", "--preset", "tiny", "--model", "sd"], "--preset: give either --preset or --model"),
                         (["serve", "--preset", "big"], "preset must be one of ['tiny', 'sd15', 'tiny-flux-fill'")):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        err = capsys.readouterr().err
        assert exc.value.code == 1 and needle in err and "Traceback" not in err, err
    assert len(calls) == 1


def test_metrics_count_requests_by_status_and_stage_latencies(client):
    from asymvq.serve.metrics import parse_metrics

    before = parse_metrics(client.get("/metrics").text)
    assert post(client).status_code == 200
    assert post(client, steps="0").status_code == 400
    resp = client.get("/metrics")
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/plain")
    after = parse_metrics(resp.text)

    def delta(name, **labels):
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0) - before.get(key, 0)

    assert delta("asymvq_requests_total", status="200") == 1 and delta("asymvq_requests_total", status="400") == 1
    for stage in ("request", "text_encode", "unet_step", "decode"):
        assert delta("asymvq_stage_seconds_count", stage=stage) == 1, stage
    assert delta("asymvq_batch_size_sum", stage="pipeline") == 1
    assert after[("asymvq_queue_depth", (("stage", "pipeline"),))] == 0


def test_region_decoding_is_served_and_reported(pipe, monkeypatch):
    """--decode-region: every job decodes the region it asks for; X-Asymvq-Decode-Region says what it decoded, and with
    which statistics (--region-stats)."""
    for options, want in (({"region": "mask", "margin": 0}, "box 1:3,1:3 (mask: share 0.25"),
                          ({"region": "mask", "margin": 0, "region_stats": "lowres"}, "box 1:3,1:3 (mask: share 0.25"),
                          ({"region": "auto"}, "full (auto: box share 1.00")):  # margin 4 covers the 4x4 latent
        with TestClient(create_app(pipe, max_pixels=64 * 64, max_steps=20, decode_options=options)) as c:
            resp = post(c)
            header = resp.headers["X-Asymvq-Decode-Region"]
            assert resp.status_code == 200 and header.startswith(want), resp.headers
            assert header.endswith(f", {options.get('region_stats', 'box')} statistics)"), header
            assert c.get("/healthz").json()["decode_options"] == options
        source, hole = source_and_mask()
        ref = pipe("a red sofa", source, hole, num_inference_steps=2, generator=torch.Generator().manual_seed(3),
                   decode_options=options).images[0]
        got = PIL.Image.open(io.BytesIO(resp.content))
        assert np.abs(np.asarray(got, np.int16) - np.asarray(ref, np.int16)).max() <= 1
    with TestClient(create_app(pipe, max_pixels=64 * 64, max_steps=20)) as c:
        assert "X-Asymvq-Decode-Region" not in post(c).headers
    with pytest.raises(ValueError, match=r"decode_options: unknown keys \['regions'\]"):
        create_app(pipe, decode_options={"regions": "auto"})
    with pytest.raises(ValueError, match=r"^margin: expected an integer >= 0"):
        create_app(pipe, decode_options={"region": "auto", "margin": -1})
    with pytest.raises(ValueError, match=r"^region_stats: only with region='mask' or 'auto'"):
        create_app(pipe, decode_options={"region_stats": "lowres"})
