"""Graceful drain of `asymvq serve`, started as a user starts it (its own process, 127.0.0.1, tiny preset): after
SIGTERM new requests are 503 (our shape on /v1/inpaint, OpenAI's on /v1/images/edits), /readyz fails while /livez
answers, the running job finishes with 200, the queued one past --shutdown-timeout is cancelled with 503, and the
process exits 0 within the bound; then connections are refused."""
from __future__ import annotations

import json
import socket
import threading
import time

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from serve_helpers import ServerProcess, inpaint_png_request, inpaint_request, read_response, request
from test_server_cancel import wait_listed

from asymvq.serve.limits import DRAIN_CANCEL_GRACE_S

# --shutdown-timeout: the running job (40 steps at 128x128, 0.6 s idle here, 4 s at load average 13) finishes inside it
BOUND = 8.0
GET = "GET {} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"


def _send(port: int, raw: bytes, out: dict, key: str) -> threading.Thread:
    def go():
        with socket.create_connection(("127.0.0.1", port), timeout=120) as sock:
            sock.sendall(raw)
            out[key] = read_response(sock)
            out[key + "_t"] = time.monotonic()

    thread = threading.Thread(target=go)
    thread.start()
    return thread


def test_sigterm_drains_finishes_the_running_job_cancels_the_rest_and_exits_0(tmp_path):
    # ~20 s: one server start (~5 s here) and the drain's bound, which is what the test is about
    srv = ServerProcess(["--preset", "tiny", "--max-steps", "900", "--shutdown-timeout", str(BOUND)],
                        tmp_path / "serve.log")
    try:
        assert request(srv.port, inpaint_request())[0] == 200  # warm
        out: dict = {}
        threads = [_send(srv.port, inpaint_png_request(128, steps=40, extra_headers="X-Asymvq-Job-Id: running\r\n"),
                         out, "running")]
        wait_listed(srv.port, "running")
        # queued behind it: 900 steps at 256x256 (tens of seconds on any CPU), so it is still open at the bound
        threads.append(_send(srv.port, inpaint_png_request(256, steps=900, extra_headers="X-Asymvq-Job-Id: long\r\n"),
                             out, "long"))
        wait_listed(srv.port, "long")
        t_term = time.monotonic()
        srv.proc.terminate()  # SIGTERM
        time.sleep(0.3)  # the drain starts at uvicorn's next tick (0.1 s)

        status, headers, body = request(srv.port, inpaint_request(seed=3))
        assert status == 503 and headers["retry-after"] == "2" and headers["connection"] == "close", (status, body)
        assert json.loads(body)["error"].startswith("server: expected a server that is not shutting down"), body
        status, headers, body = request(srv.port, inpaint_request(path="/v1/images/edits"))
        error = json.loads(body)["error"]
        assert status == 503 and headers["retry-after"] == "2" and error["message"].startswith("server: expected a"), body
        assert set(error) == {"message", "type", "param", "code"}  # OpenAI's shape on its endpoint
        status, _, body = request(srv.port, GET.format("/readyz").encode())
        assert status == 503 and json.loads(body)["status"] == "draining", body
        status, _, body = request(srv.port, GET.format("/livez").encode())
        assert status == 200 and json.loads(body)["draining"] is True, body

        srv.proc.wait(BOUND + DRAIN_CANCEL_GRACE_S + 20)
        took = time.monotonic() - t_term
        for t in threads:
            t.join(30)
        assert srv.proc.returncode == 0, (srv.proc.returncode, srv.log()[-3000:])
        status, _, body = out["running"]
        assert status == 200 and body.startswith(b"\x89PNG"), body[:300]
        assert out["running_t"] > t_term  # in flight at SIGTERM: it finished
        status, headers, body = out["long"]
        message = json.loads(body)["error"]
        assert status == 503 and headers["retry-after"] == "2", body
        assert message.startswith(f"server: expected the job within the drain's {BOUND:g} s (--shutdown-timeout)"), body
        assert BOUND - 0.5 < out["long_t"] - t_term < BOUND + DRAIN_CANCEL_GRACE_S, out["long_t"] - t_term
        assert took < BOUND + DRAIN_CANCEL_GRACE_S + 5, took  # exits promptly past the bound
        with pytest.raises(ConnectionRefusedError):  # closed once it exits
            socket.create_connection(("127.0.0.1", srv.port), timeout=5).close()
        print(f"drain: SIGTERM to exit {took:.1f} s (bound {BOUND:g} s), running job 200 "
              f"{out['running_t'] - t_term:.2f} s after SIGTERM, queued one 503 at {out['long_t'] - t_term:.2f} s")
        log = srv.log()
        assert "draining" in log and "Traceback" not in log, log[-3000:]
    finally:
        srv.kill()
