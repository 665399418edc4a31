"""`asymvq serve --ray` as a user starts it (its own process, local Ray, tiny preset): where the Ray it starts
listens, what clients see when the denoise replica is killed under load (bounded: well under 90 s of load), that a
cancelled job stops its denoise loop, what they see when the ingress replica is killed, and, last, the drain on
SIGTERM (one server for the whole module: the drain is how it stops)."""
from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("ray.serve", reason="the ray extra is not installed")
pytest.importorskip("fastapi")

from serve_helpers import ServerProcess, descendants, inpaint_png_request, inpaint_request, listening_sockets, metric, request

from asymvq.serve.limits import DRAIN_CANCEL_GRACE_S

LOOPBACK = ("127.0.0.1", "::ffff:127.0.0.1", "::1")
HEALTHZ = b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
BOUND = 8  # --shutdown-timeout: the drain's bound (the last test)


@pytest.fixture(scope="module")
def ray_server(tmp_path_factory):
    srv = ServerProcess(["--ray", "--preset", "tiny", "--cpus-per-denoise", "1", "--cpus-per-decode", "1",
                         "--max-steps", "900", "--shutdown-timeout", str(BOUND)],
                        tmp_path_factory.mktemp("ray") / "serve-ray.log", startup_s=300)
    yield srv
    took = srv.stop(timeout=90)
    print(f"ray server stopped {took:.1f} s after SIGTERM")
    srv.kill()


def test_the_local_ray_listens_on_the_loopback_only(ray_server):
    """Every TCP socket listening in the server's process tree (GCS, raylet, workers, agents, Serve's proxy) is
    bound to 127.0.0.1, and there is no dashboard: an open Ray runs anyone's jobs (CVE-2023-48022)."""
    time.sleep(2)  # the agents Ray starts last
    sockets = listening_sockets(descendants(ray_server.proc.pid))
    assert f"127.0.0.1:{ray_server.port}" in sockets, sockets  # the HTTP proxy: the reading works
    assert len(sockets) >= 4, sockets  # GCS, raylet, workers: Ray's own servers were seen too
    exposed = {addr: who for addr, who in sockets.items() if addr.rsplit(":", 1)[0] not in LOOPBACK}
    assert not exposed, f"listening beyond the loopback: {exposed}"
    assert not any(addr.endswith(":8265") for addr in sockets), sockets  # the dashboard stays off
    status, _, body = request(ray_server.port, HEALTHZ)
    deployments = json.loads(body)["ray"]["deployments"]  # readiness from Serve's controller, asked now
    assert status == 200 and {name: d["status"] for name, d in deployments.items()} == \
        {"ingress": "HEALTHY", "denoise": "HEALTHY", "decode": "HEALTHY"}, body


def test_dropped_uploads_on_ray_are_499_not_500(ray_server):
    """Behind Serve's proxy a client that leaves mid-upload reaches the ingress as a cancelled task (found by the
    soak's hostile clients: 2 of 12 counted as 500 with a traceback)."""
    port = ray_server.port
    before = {s: metric(port, "asymvq_requests_total", status=s) for s in ("499", "500")}
    for _ in range(4):
        raw = inpaint_request()
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(raw[: len(raw) // 3])
            time.sleep(0.3)
    deadline = time.monotonic() + 30
    while metric(port, "asymvq_requests_total", status="499") < before["499"] + 4:
        assert time.monotonic() < deadline, "the dropped uploads were not all counted as 499"
        time.sleep(0.5)
    assert metric(port, "asymvq_requests_total", status="500") == before["500"]
    status, _, body = request(port, inpaint_request(extra_headers=f"X-Junk: {'a' * 20_000}\r\n"))
    assert status == 431 and json.loads(body)["error"].startswith("headers: expected at most"), body


def _replica_pids(root: int, deployment: str) -> list[int]:
    out = []
    for pid in descendants(root):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if f"ServeReplica:asymvq:{deployment}" in cmdline:
            out.append(pid)
    return out


def test_killing_the_denoise_replica_under_load_gives_no_500(ray_server):
    port = ray_server.port
    for seed in range(2):  # warm: both stages built and answering
        assert request(port, inpaint_request(seed=seed))[0] == 200
    pids = _replica_pids(ray_server.proc.pid, "denoise")
    assert len(pids) == 1, pids
    results: list[tuple[float, float, int, dict, bytes]] = []
    health: list[tuple[float, int]] = []
    stop = threading.Event()
    t_kill = None

    def client(k: int):
        seed = 100 * k
        while not stop.is_set():
            seed += 1
            t0 = time.monotonic()
            # 20 steps: the denoise replica is busy most of the time, so the kill meets jobs running and queued there
            status, headers, body = request(port, inpaint_request(seed=seed, steps=20), timeout=120)
            results.append((t0, time.monotonic(), status, headers, body))

    def prober():
        while not stop.is_set():
            health.append((time.monotonic(), request(port, HEALTHZ, timeout=30)[0]))
            time.sleep(0.25)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(4)] + [threading.Thread(target=prober)]
    for t in threads:
        t.start()
    try:
        time.sleep(3)
        t_kill = time.monotonic()
        os.kill(pids[0], signal.SIGKILL)
        # load goes on until a request sent after the kill succeeds with /healthz ok again, at most 75 s
        while time.monotonic() - t_kill < 75:
            if any(t0 > t_kill and s == 200 for t0, _, s, _, _ in results) and health and health[-1][1] == 200 \
                    and any(t > t_kill and s == 503 for t, s in health):
                break
            time.sleep(0.5)
    finally:
        stop.set()
        for t in threads:
            t.join(150)
    statuses = [s for _, _, s, _, _ in results]
    first_ok = min((t1 for t0, t1, s, _, _ in results if t0 > t_kill and s == 200), default=None)
    healthy_again = min((t for t, s in health if t > t_kill and s == 200 and
                         any(t_kill < u < t and v == 503 for u, v in health)), default=None)
    retries = metric(port, "asymvq_retries_total", stage="denoise")
    print(f"ray replica kill: {len(statuses)} requests, {statuses.count(200)} x 200, {statuses.count(503)} x 503, "
          f"{retries:.0f} retried; first success sent after the kill "
          f"{'never' if first_ok is None else f'{first_ok - t_kill:.1f} s'} after it, /healthz ok again after "
          f"{'never' if healthy_again is None else f'{healthy_again - t_kill:.1f} s'}")
    assert set(statuses) <= {200, 503}, statuses  # no 500, no dropped connection
    for _, _, status, headers, body in results:
        if status == 503:  # our JSON shape, with Retry-After
            assert headers.get("retry-after") and json.loads(body)["error"].startswith(("denoise: expected", "server:"))
    assert retries + statuses.count(503) >= 1  # the kill was felt: requests in flight were retried or refused
    assert any(t > t_kill and s == 503 for t, s in health), "/healthz kept answering ok while the replica was down"
    assert first_ok is not None and healthy_again is not None, "no recovery within 75 s"
    assert _replica_pids(ray_server.proc.pid, "denoise") not in ([], pids)  # a new replica serves


def _send(port: int, raw: bytes, out: dict, key, timeout: float = 150) -> threading.Thread:
    def go():
        try:
            out[key] = request(port, raw, timeout=timeout)
        except OSError as exc:  # the connection itself failed: recorded, not raised in a thread
            out[key] = (0, {}, repr(exc).encode())
        out[(key, "t")] = time.monotonic()

    thread = threading.Thread(target=go)
    thread.start()
    return thread


def test_a_cancelled_job_on_ray_stops_its_denoise_loop(ray_server):
    """DELETE of a job inside a denoise batch stops that batch's step loop (the replica's call is cancelled, and a
    batch whose every job was given up stops at its next step): the next request does not wait for 900 steps."""
    port = ray_server.port
    out: dict = {}
    thread = _send(port, inpaint_png_request(256, steps=900, extra_headers="X-Asymvq-Job-Id: doomed\r\n"), out, "doomed")
    _wait_listed(port, "doomed")
    time.sleep(1.0)  # in the denoise replica's step loop
    t0 = time.monotonic()
    assert request(port, b"DELETE /v1/jobs/doomed HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")[0] == 200
    thread.join(60)
    status, _, body = request(port, inpaint_request(seed=5))
    took = time.monotonic() - t0
    print(f"ray cancel: DELETE to its answer {out[('doomed', 't')] - t0:.2f} s, then a 2-step request answered "
          f"{took:.2f} s after the DELETE")
    assert out["doomed"][0] == 409 and status == 200, (out["doomed"], body)
    # the rest of 900 steps at 256x256 is 40 s here, 15 s or more on any CPU; a 2-step job takes well under 1 s
    assert took < 10, took


def test_killing_the_ingress_replica_answers_in_flight_500_and_new_requests_recover(ray_server):
    """The ingress replica holds its requests' state: Serve's HTTP proxy, not our code, answers those in flight when
    it dies, with its own plain-text 500 (ray 2.60: a RayActorError is a 500 whose body is uvicorn's default,
    http_util.send_http_response_on_exception writes none); nothing on our side can answer them. What this pins
    down: exactly that answer and no other, and requests sent after the kill get 200 again within a bound."""
    port = ray_server.port
    assert request(port, inpaint_request(seed=1))[0] == 200
    pids = _replica_pids(ray_server.proc.pid, "ingress")
    assert len(pids) == 1, pids
    out: dict = {}
    threads = [_send(port, inpaint_request(seed=k, steps=150), out, k) for k in range(3)]
    time.sleep(1.0)  # the three are in the denoise stage, waited on by the ingress
    t_kill = time.monotonic()
    os.kill(pids[0], signal.SIGKILL)
    for t in threads:
        t.join(150)
    in_flight = [out[k] for k in range(3)]
    # new requests, one every 0.5 s, until one is answered 200 (at most 60 s)
    after: list[tuple[float, int, bytes]] = []
    while time.monotonic() - t_kill < 60:
        t0 = time.monotonic()
        try:
            status, headers, body = request(port, inpaint_request(seed=7), timeout=60)
        except OSError as exc:
            status, headers, body = 0, {}, repr(exc).encode()
        after.append((t0 - t_kill, status, body[:120], time.monotonic() - t_kill))
        if status == 200:
            break
        time.sleep(0.5)
    recovered = after[-1][3] if after and after[-1][1] == 200 else None  # when the first 200 came back
    print(f"ray ingress kill: in flight {[s for s, _, _ in in_flight]} answered "
          f"{[round(out[(k, 't')] - t_kill, 2) for k in range(3)]} s after the kill; new requests (sent, status, "
          f"answered) {[(round(t, 1), s, round(u, 1)) for t, s, _, u in after]}: first 200 "
          f"{'never' if recovered is None else f'{recovered:.1f} s'} after the kill")
    for status, headers, body in in_flight:
        assert status in (200, 500), (status, body)
        if status == 500:  # Serve's proxy's own answer, not ours
            assert body == b"Internal Server Error" and headers["content-type"].startswith("text/plain"), (headers, body)
    assert any(s == 500 for s, _, _ in in_flight), in_flight  # the kill was felt
    for _, status, body, _ in after:  # while the replica is replaced: our 503s only (or the proxy waits), never a 500
        assert status in (200, 503), (status, body)
    assert recovered is not None and recovered < 45, after
    assert _replica_pids(ray_server.proc.pid, "ingress") not in ([], pids)  # a new replica serves


def test_sigterm_drains_the_ray_graph_and_leaves_no_ray_process(ray_server):
    """Last in this file (it ends the module's server): SIGTERM to `asymvq serve --ray` drains the ingress (new
    requests 503 in our shape, /readyz draining), the running job finishes with 200, the one past --shutdown-timeout
    is cancelled with 503, Serve shuts down, the process exits 0 and every process of its Ray is gone."""
    port, srv = ray_server.port, ray_server
    assert request(port, inpaint_request(seed=2))[0] == 200  # the graph serves (a new ingress after the kill above)
    tree = [p for p in descendants(srv.proc.pid) if p != srv.proc.pid]
    assert len(tree) >= 4, tree  # GCS, raylet, workers: what has to be gone at the end
    out: dict = {}
    # a second or two of steps: running in its own denoise batch when SIGTERM comes, done well inside the bound
    threads = [_send(port, inpaint_png_request(64, steps=150, extra_headers="X-Asymvq-Job-Id: running\r\n"), out,
                     "running")]
    _wait_listed(port, "running")
    # 900 steps at 256x256: tens of seconds on any CPU, so still open at the bound
    threads.append(_send(port, inpaint_png_request(256, steps=900, extra_headers="X-Asymvq-Job-Id: long\r\n"), out, "long"))
    _wait_listed(port, "long")
    t_term = time.monotonic()
    srv.proc.terminate()
    deadline = time.monotonic() + 20
    while True:  # the driver's handle call reaches the ingress within a moment (a job sent before is still taken)
        status, _, body = request(port, b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        if status == 503 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    t_draining = time.monotonic() - t_term
    assert status == 503 and json.loads(body)["status"] == "draining", body
    status, headers, body = request(port, inpaint_request(seed=4), timeout=30)
    assert status == 503 and headers["retry-after"] == "2", (status, body)
    assert json.loads(body)["error"].startswith("server: expected a server that is not shutting down"), body
    status, _, body = request(port, inpaint_request(path="/v1/images/edits"))
    assert status == 503 and json.loads(body)["error"]["message"].startswith("server: expected a server"), body
    srv.proc.wait(BOUND + DRAIN_CANCEL_GRACE_S + 60)
    took = time.monotonic() - t_term
    for t in threads:
        t.join(30)
    try:
        assert srv.proc.returncode == 0, (srv.proc.returncode, srv.log()[-3000:])
        assert out["running"][0] == 200 and out[("running", "t")] > t_term, out["running"]  # in flight at SIGTERM
        status, headers, body = out["long"]
        assert status == 503 and headers["retry-after"] == "2", (status, body)
        assert json.loads(body)["error"].startswith(f"server: expected the job within the drain's {BOUND:g} s"), body
        time.sleep(1)
        left = [p for p in tree if _alive(p)]
        assert not left, f"Ray processes left behind: {left}"
        print(f"ray drain: SIGTERM to exit {took:.1f} s (bound {BOUND:g} s), draining at the ingress after "
              f"{t_draining:.2f} s; running job 200 at "
              f"{out[('running', 't')] - t_term:.1f} s, the long one 503 at {out[('long', 't')] - t_term:.1f} s")
        assert took < BOUND + DRAIN_CANCEL_GRACE_S + 30, took
    finally:
        for pid in tree:  # whatever outlived it: ours to end
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _wait_listed(port: int, job_id: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, _, body = request(port, b"GET /v1/jobs HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        if status == 200 and any(j["id"] == job_id for j in json.loads(body)["jobs"]):
            return
        time.sleep(0.05)
    raise AssertionError(f"{job_id} never listed")
