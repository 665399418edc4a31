"""Cancellation: a client that leaves, or DELETE /v1/jobs/{id}, stops its job at the next denoising step and frees
the pipeline for the next request; the hook changes nothing in the runs it lets finish."""
from __future__ import annotations

import socket
import threading
import time

import pytest
import torch

pytest.importorskip("fastapi")
from serve_helpers import ServerProcess, inpaint_png_request, metric, read_response, request
from test_server import source_and_mask

from asymvq.pipeline import InpaintPipeline
from asymvq.pipeline.inpaint_pipeline import JobCancelled

SIZE = 64  # the 2-step requests
LONG = 128  # the 150-step ones: tiny preset at 128x128, seconds of steps even on a fast idle CPU


def test_cancel_hook_stops_at_a_step_boundary_and_changes_nothing_else():
    pipe = InpaintPipeline.from_preset("tiny")
    source, hole = source_and_mask(SIZE, SIZE)

    def run(cancel=None):
        return pipe.denoise("a sofa", source, hole, num_inference_steps=4, generator=torch.Generator().manual_seed(1),
                            cancel=cancel).latents

    assert torch.equal(run(), run(lambda: False))
    asked = []

    def after_two():
        asked.append(1)
        return len(asked) > 2

    with pytest.raises(JobCancelled, match="before denoising step 3 of 4"):
        run(after_two)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = ServerProcess(["--preset", "tiny", "--max-steps", "150"], tmp_path_factory.mktemp("cancel") / "serve.log")
    yield srv
    srv.stop()


def timed(port: int, steps: int, **kw) -> tuple[float, int, dict]:
    t0 = time.perf_counter()
    status, headers, _ = request(port, inpaint_png_request(SIZE, steps=steps, **kw))
    return time.perf_counter() - t0, status, headers


def wait_listed(port: int, job_id: str, timeout: float = 30) -> None:
    import json

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, _, body = request(port, b"GET /v1/jobs HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        if status == 200 and any(j["id"] == job_id for j in json.loads(body)["jobs"]):
            return
        time.sleep(0.05)
    raise AssertionError(f"{job_id} never listed")


def test_an_abandoned_job_frees_the_pipeline(server):
    timed(server.port, 2)  # warm
    idle, status, headers = timed(server.port, 2)
    assert status == 200 and len(headers["x-asymvq-job-id"]) == 32  # the server's own id when the client sends none
    closed = metric(server.port, "asymvq_requests_total", status="499")
    sock = socket.create_connection(("127.0.0.1", server.port))
    sock.sendall(inpaint_png_request(LONG, steps=150, extra_headers="X-Asymvq-Job-Id: abandoned\r\n"))
    wait_listed(server.port, "abandoned")
    time.sleep(0.3)  # in its step loop by now
    sock.close()  # the client gives up
    after, status, _ = timed(server.port, 2)
    assert status == 200
    log = server.log()
    assert "job abandoned stopped: client closed the connection" in log, log[-2000:]
    stopped_at = int(log.split("job abandoned stopped")[1].split("before denoising step ")[1].split()[0])
    assert stopped_at < 150
    assert metric(server.port, "asymvq_requests_total", status="499") == closed + 1
    # about as long as on an idle server, far from the 150 steps the abandoned job asked for
    print(f"2-step request: idle {idle * 1e3:.0f} ms, right after an abandoned 150-step one {after * 1e3:.0f} ms "
          f"(it stopped before step {stopped_at})")
    assert after < idle + 3.0, (idle, after)


def test_delete_cancels_a_job_in_progress(server):
    answer = {}

    def long_request():
        with socket.create_connection(("127.0.0.1", server.port), timeout=300) as sock:
            sock.sendall(inpaint_png_request(LONG, steps=150, extra_headers="X-Asymvq-Job-Id: job-7\r\n"))
            answer["t0"] = time.perf_counter()
            answer["response"] = read_response(sock)
            answer["t1"] = time.perf_counter()

    thread = threading.Thread(target=long_request)
    thread.start()
    wait_listed(server.port, "job-7")
    time.sleep(0.5)
    t0 = time.perf_counter()
    status, _, body = request(server.port, b"DELETE /v1/jobs/job-7 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert status == 200 and b'"cancelled":true' in body
    thread.join(60)
    status, headers, body = answer["response"]
    print(f"DELETE to answer: {(answer['t1'] - t0) * 1e3:.0f} ms")
    assert status == 409 and b"cancelled by DELETE /v1/jobs/job-7" in body
    assert headers["x-asymvq-job-id"] == "job-7"
    status, _, body = request(server.port, b"DELETE /v1/jobs/job-7 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert status == 404 and b"job: expected the id of a job in progress, got 'job-7'" in body
    status, _, body = request(server.port, inpaint_png_request(SIZE, steps=2, extra_headers="X-Asymvq-Job-Id: a b\r\n"))
    assert status == 400 and b"X-Asymvq-Job-Id: expected 1 to 64 letters" in body


def test_a_request_deadline_stops_its_job_with_504(server):
    t0 = time.perf_counter()
    status, headers, body = request(server.port, inpaint_png_request(LONG, steps=150,
                                                                     extra_headers="X-Asymvq-Timeout-s: 0.5\r\n"))
    took = time.perf_counter() - t0
    assert status == 504, body
    assert b"timeout: expected the job within 0.5 s (X-Asymvq-Timeout-s, at most the server's 600)" in body
    assert b"before denoising step" in body and took < 5, took
    status, _, body = request(server.port, inpaint_png_request(SIZE, extra_headers="X-Asymvq-Timeout-s: soon\r\n"))
    assert status == 400 and b"X-Asymvq-Timeout-s: expected a number of seconds > 0" in body
    assert timed(server.port, 2)[1] == 200  # and the pipeline is free again


def test_the_servers_own_deadline_caps_every_request_and_liveness_is_apart():
    from fastapi.testclient import TestClient
    from test_server import png

    from asymvq.serve.server import create_app

    source, hole = source_and_mask(LONG, LONG)
    with TestClient(create_app(InpaintPipeline.from_preset("tiny"), max_steps=150, request_timeout_s=0.3)) as client:
        resp = client.post("/v1/inpaint", files={"image": ("i.png", png(source)), "mask": ("m.png", png(hole))},
                           data={"prompt": "a sofa", "steps": "150"}, headers={"X-Asymvq-Timeout-s": "30"})
        assert resp.status_code == 504 and "within 0.3 s" in resp.json()["error"]
        assert client.get("/livez").json() == {"status": "alive", "in_progress": 0, "max_queue": 8, "draining": False}
        assert client.get("/readyz").json() == client.get("/healthz").json()
        assert client.get("/readyz").json()["status"] == "ok"
    with pytest.raises(ValueError, match="request_timeout_s: expected a number of seconds > 0, got 0"):
        create_app(InpaintPipeline.from_preset("tiny"), request_timeout_s=0)


def test_a_stream_whose_client_leaves_stops_its_job_and_frees_its_place(server):
    """The client reads the first progress event (the stream is running the job), then leaves: the job stops at
    its next step boundary, the request's place is freed, and the next request is served at once."""
    timed(server.port, 2)  # warm
    idle, _, _ = timed(server.port, 2)
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=60)
    t0 = time.perf_counter()
    sock.sendall(inpaint_png_request(LONG, steps=150, extra_headers="X-Asymvq-Job-Id: streamed\r\n", stream="true"))
    seen = b""
    while b"event: progress" not in seen:
        chunk = sock.recv(1 << 16)
        assert chunk, seen
        seen += chunk
    first = time.perf_counter() - t0
    assert seen.startswith(b"HTTP/1.1 200") and b"text/event-stream" in seen and b'"job_id":"streamed"' in seen
    sock.close()
    after, status, _ = timed(server.port, 2)
    assert status == 200
    log = server.log()
    assert "job streamed stopped: client closed the connection" in log, log[-2000:]
    stopped_at = int(log.split("job streamed stopped")[1].split("before denoising step ")[1].split()[0])
    assert stopped_at < 150
    status, _, body = request(server.port, b"GET /v1/jobs HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert b"streamed" not in body
    print(f"stream: first progress event after {first * 1e3:.0f} ms; 2-step request idle {idle * 1e3:.0f} ms, after "
          f"the abandoned stream {after * 1e3:.0f} ms (it stopped before step {stopped_at})")
    assert after < idle + 3.0, (idle, after)


def test_a_deadline_mid_stream_is_a_504_error_event(server):
    status, headers, body = request(server.port, inpaint_png_request(LONG, steps=150, stream="true",
                                                                     extra_headers="X-Asymvq-Timeout-s: 0.5\r\n"))
    assert status == 200 and headers["content-type"].startswith("text/event-stream")
    last = body[body.rindex(b"event: "):]  # the last event (the body is chunked)
    assert last.startswith(b"event: error\ndata: ") and b'"status":504' in last, body[-500:]
    assert b"timeout: expected the job within 0.5 s" in last and b"before denoising step" in last
