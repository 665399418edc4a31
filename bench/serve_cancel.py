"""Cancellation latency on both HTTP servers (`asymvq serve` and `asymvq serve --ray`, tiny preset, 127.0.0.1).

    python bench/serve_cancel.py [--servers fastapi,ray] [--repeats 3] [--out bench/results/serve_cancel.json]

Per server, the median of ``--repeats`` of each:
- ``idle_2step_ms``: a 2-step request (64x64) on an idle server;
- ``delete_to_answer_ms``: a 150-step request (256x256) is running; ``DELETE /v1/jobs/{id}`` is sent: the time until
  its own request is answered (409), i.e. request to stop as a client sees it;
- ``after_delete_2step_ms``: a 2-step request sent right after that DELETE's answer: its latency;
- ``after_abandon_2step_ms``: a 150-step request is running and its client closes the connection; a 2-step
  request sent right then: its latency (issue 21: "about as long as on an idle server");
- ``sigterm_to_exit_s``: SIGTERM of the idle server to its exit (the drain, then Serve and Ray shut down).
On Ray a cancelled job that is already in a denoise batch's step loop runs to its end there (its HTTP request
is answered at once): the "after" rows show what that costs the next request.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import threading
import time
from pathlib import Path

import httpx
from serve_load import Server, machine, png_pair

LONG, SHORT = (256, 150), (64, 2)  # (size, steps): the long one seconds of steps even on a fast CPU


def post(url: str, size: int, steps: int, job_id: str | None = None, timeout: float = 600) -> tuple[int, float]:
    image, mask = png_pair(size, size, 0)
    t0 = time.perf_counter()
    resp = httpx.post(f"{url}/v1/inpaint", files={"image": ("i.png", image), "mask": ("m.png", mask)},
                      data={"prompt": "a red sofa", "steps": str(steps), "seed": "1"},
                      headers={"X-Asymvq-Job-Id": job_id} if job_id else {}, timeout=timeout)
    return resp.status_code, (time.perf_counter() - t0) * 1e3


def wait_running(url: str, job_id: str, settle_s: float = 0.5) -> None:
    deadline = time.monotonic() + 60
    while not any(j["id"] == job_id for j in httpx.get(f"{url}/v1/jobs", timeout=30).json()["jobs"]):
        if time.monotonic() > deadline:
            raise RuntimeError(f"{job_id} never listed")
        time.sleep(0.02)
    time.sleep(settle_s)  # in its step loop by now


def delete_round(url: str, k: int) -> dict:
    job_id, answer = f"bench-del-{k}", {}

    def long():
        answer["status"], _ = post(url, *LONG, job_id=job_id)
        answer["t"] = time.perf_counter()

    thread = threading.Thread(target=long)
    thread.start()
    wait_running(url, job_id)
    t0 = time.perf_counter()
    deleted = httpx.delete(f"{url}/v1/jobs/{job_id}", timeout=30).status_code
    thread.join(600)
    status, after = post(url, *SHORT)
    assert deleted == 200 and answer["status"] == 409 and status == 200, (deleted, answer, status)
    return dict(delete_to_answer_ms=(answer["t"] - t0) * 1e3, after_delete_2step_ms=after)


def abandon_round(url: str, k: int) -> dict:
    image, mask = png_pair(LONG[0], LONG[0], 0)
    job_id = f"bench-abandon-{k}"
    request = httpx.Request("POST", f"{url}/v1/inpaint", files={"image": ("i.png", image), "mask": ("m.png", mask)},
                            data={"prompt": "a red sofa", "steps": str(LONG[1]), "seed": "1"},
                            headers={"X-Asymvq-Job-Id": job_id, "Connection": "close"})
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)))
    head = "POST /v1/inpaint HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in request.headers.items()) + "\r\n"
    sock.sendall(head.encode() + request.read())
    wait_running(url, job_id)
    sock.close()  # the client gives up
    status, after = post(url, *SHORT)
    assert status == 200, status
    return dict(after_abandon_2step_ms=after)


def measure(kind: str, repeats: int) -> dict:
    server = Server(kind, "tiny", extra=("--max-steps", "150"))
    try:
        for _ in range(3):  # warm: both sizes
            post(server.url, *SHORT)
        post(server.url, LONG[0], 2)  # the long one's size, once
        rows: dict[str, list[float]] = {}
        for k in range(repeats):  # idle ones between the others: on a loaded machine the load drifts
            for name, value in {"idle_2step_ms": post(server.url, *SHORT)[1], **delete_round(server.url, k),
                                **abandon_round(server.url, k)}.items():
                rows.setdefault(name, []).append(value)
            time.sleep(10 if kind == "ray" else 0)  # Ray: a cancelled job's batch may still run; let it end
        load = round(os.getloadavg()[0], 2)
    finally:
        exit_s = server.stop()
    return dict(server=kind, preset="tiny", long=dict(size=LONG[0], steps=LONG[1]), short=dict(size=SHORT[0], steps=SHORT[1]),
                repeats=repeats, load_avg_1min=load, startup_s=round(server.startup_s, 1),
                exit_code=server.proc.returncode, sigterm_to_exit_s=round(exit_s, 2),
                **{name: round(statistics.median(v), 1) for name, v in rows.items()},
                all_ms={name: [round(x, 1) for x in v] for name, v in rows.items()})


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--servers", default="fastapi,ray")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--note", default="")
    p.add_argument("--out", default="bench/results/serve_cancel.json")
    args = p.parse_args(argv)
    out = dict(machine_start=machine(), note=args.note, runs=[])
    for kind in args.servers.split(","):
        row = measure(kind, args.repeats)
        out["runs"].append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "all_ms"}), flush=True)
    out["machine_end"] = machine()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
