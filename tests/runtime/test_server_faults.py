"""`asymvq serve` under hostile clients, started as a user starts it (its own process, 127.0.0.1, tiny preset):
the queue bound holds for bodies that finish together, a dropped upload is a 499 and no traceback, a stalled
upload gets 408, oversized headers 431, and SIGTERM ends the server within its shutdown deadline."""
from __future__ import annotations

import json
import select
import socket
import time

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from serve_helpers import ServerProcess, inpaint_request, metric, read_response, request

MAX_QUEUE, BODY_TIMEOUT = 4, 3


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = ServerProcess(["--preset", "tiny", "--max-queue", str(MAX_QUEUE), "--body-timeout", str(BODY_TIMEOUT),
                         "--shutdown-timeout", "2"], tmp_path_factory.mktemp("serve") / "serve.log")
    yield srv
    srv.stop()
    assert "Traceback" not in srv.log(), srv.log()[-3000:]


def test_queue_bound_counts_from_the_body_start(server):
    """20 clients send half a body each, then all finish at once: at most MAX_QUEUE are admitted, the rest 503
    (counted after parsing, as before, all 20 would have been queued and answered 200)."""
    raws = [inpaint_request(seed=i) for i in range(20)]
    socks = [socket.create_connection(("127.0.0.1", server.port), timeout=120) for _ in raws]
    answers = {}
    try:
        for sock, raw in zip(socks, raws):
            sock.sendall(raw[: len(raw) // 2])
        time.sleep(1.5)  # every head has reached the server; bodies are half sent
        for i, sock in enumerate(socks):
            if select.select([sock], [], [], 0)[0]:  # answered already (503, before its body)
                answers[i] = read_response(sock)
        for i, (sock, raw) in enumerate(zip(socks, raws)):
            if i not in answers:
                sock.sendall(raw[len(raw) // 2:])
        for i, sock in enumerate(socks):
            if i not in answers:
                answers[i] = read_response(sock)
    finally:
        for sock in socks:
            sock.close()
    statuses = sorted(status for status, _, _ in answers.values())
    assert statuses.count(200) == MAX_QUEUE and statuses.count(503) == 20 - MAX_QUEUE, statuses
    for status, headers, body in answers.values():
        if status == 503:
            assert headers["retry-after"] == "1" and json.loads(body)["error"].startswith("server: expected at most 4")


def test_a_client_that_drops_mid_upload_is_a_499_not_a_500(server):
    before = {s: metric(server.port, "asymvq_requests_total", status=s) for s in ("499", "500")}
    for _ in range(3):
        raw = inpaint_request()
        with socket.create_connection(("127.0.0.1", server.port)) as sock:
            sock.sendall(raw[: len(raw) // 3])
            time.sleep(0.2)
    deadline = time.monotonic() + 20
    while metric(server.port, "asymvq_requests_total", status="499") < before["499"] + 3:
        assert time.monotonic() < deadline, "the dropped uploads were not counted as 499"
        time.sleep(0.2)
    assert metric(server.port, "asymvq_requests_total", status="500") == before["500"]
    assert "Traceback" not in server.log()
    assert request(server.port, inpaint_request())[0] == 200  # and it keeps serving


def test_a_stalled_upload_gets_408_within_the_body_deadline(server):
    raw = inpaint_request()
    with socket.create_connection(("127.0.0.1", server.port), timeout=BODY_TIMEOUT + 20) as sock:
        t0 = time.monotonic()
        sock.sendall(raw[: len(raw) // 2])
        status, headers, body = read_response(sock)
        took = time.monotonic() - t0
    assert status == 408, (status, body)
    assert json.loads(body)["error"].startswith(f"body: expected the whole body within {BODY_TIMEOUT} s, got ")
    assert BODY_TIMEOUT - 0.5 < took < BODY_TIMEOUT + 10, took
    assert metric(server.port, "asymvq_queue_depth", stage="pipeline") == 0  # its place was given back


def test_oversized_headers_are_refused(server):
    before = metric(server.port, "asymvq_requests_total", status="431")
    status, _, body = request(server.port, inpaint_request(extra_headers=f"X-Junk: {'a' * 20_000}\r\n"))
    assert status == 431 and json.loads(body)["error"].startswith("headers: expected at most 16384 bytes"), body
    assert metric(server.port, "asymvq_requests_total", status="431") == before + 1
    status, _, _ = request(server.port, inpaint_request(extra_headers=f"X-Junk: {'a' * 1_000_000}\r\n"))
    assert status in (0, 400, 431), status  # the parser stops buffering: refused or dropped, never served
    assert request(server.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")[0] == 200


def test_the_openai_endpoint_meets_the_same_transport_limits_in_its_own_shape(server):
    """408, 431 and 499 on POST /v1/images/edits too, with OpenAI's {"error": {"message", ...}}."""
    edit = dict(path="/v1/images/edits", mask_mode="white")
    raw = inpaint_request(**edit)
    with socket.create_connection(("127.0.0.1", server.port), timeout=BODY_TIMEOUT + 20) as sock:
        sock.sendall(raw[: len(raw) // 2])
        status, _, body = read_response(sock)
    error = json.loads(body)["error"]
    assert status == 408 and error["message"].startswith(f"body: expected the whole body within {BODY_TIMEOUT} s")
    assert error["type"] == "invalid_request_error" and error["param"] is None
    status, _, body = request(server.port, inpaint_request(extra_headers=f"X-Junk: {'a' * 20_000}\r\n", **edit))
    assert status == 431 and json.loads(body)["error"]["message"].startswith("headers: expected at most 16384 bytes")
    before = metric(server.port, "asymvq_requests_total", status="499")
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(raw[: len(raw) // 3])
        time.sleep(0.2)
    deadline = time.monotonic() + 20
    while metric(server.port, "asymvq_requests_total", status="499") < before + 1:
        assert time.monotonic() < deadline, "the dropped upload was not counted as 499"
        time.sleep(0.2)
    status, _, body = request(server.port, raw)
    assert status == 200 and json.loads(body)["data"][0]["b64_json"]


def test_sigterm_ends_the_server_within_its_shutdown_deadline(tmp_path):
    """A half-sent upload (body deadline 60 s) does not hold SIGTERM past --shutdown-timeout 2."""
    srv = ServerProcess(["--preset", "tiny", "--body-timeout", "60", "--shutdown-timeout", "2"], tmp_path / "s.log")
    try:
        raw = inpaint_request()
        with socket.create_connection(("127.0.0.1", srv.port)) as sock:
            sock.sendall(raw[: len(raw) // 2])
            time.sleep(0.5)
            took = srv.stop(timeout=30)
        assert srv.proc.returncode == 0 and took < 12, (took, srv.proc.returncode, srv.log()[-2000:])
    finally:
        srv.kill()
