"""What streaming costs, on both HTTP servers: time to the first progress event, and a streamed request's latency
against the same request unstreamed (docs/server.md, "Progress and previews").

Each server runs as `asymvq serve` (or `--ray`) on 127.0.0.1 (bench/serve_load.py's Server). Per server and preset,
after a warm-up, it alternates plain and streamed requests (same image, steps and seed; `stream=true` with the
default `preview_every`) one at a time, and reports medians: plain latency, streamed time to the first `progress`
event, to the `result` event, the difference (the overhead: events, previews, base64 of the result), and the
events counted.

    python bench/serve_stream.py [--servers fastapi,ray] [--presets tiny,sd15] [--repeats 3] [--out FILE]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import httpx
from serve_load import Server, machine, png_pair

SETTINGS = {"tiny": dict(size=64, steps=20), "sd15": dict(size=256, steps=10)}


def plain(client: httpx.Client, url: str, body, steps: int) -> float:
    t0 = time.perf_counter()
    resp = client.post(f"{url}/v1/inpaint", files={"image": ("i.png", body[0]), "mask": ("m.png", body[1])},
                       data={"prompt": "a red sofa", "steps": str(steps), "seed": "1"})
    resp.raise_for_status()
    return time.perf_counter() - t0


def streamed(client: httpx.Client, url: str, body, steps: int) -> dict:
    t0 = time.perf_counter()
    first = done = None
    counts: dict[str, int] = {}
    with client.stream("POST", f"{url}/v1/inpaint", files={"image": ("i.png", body[0]), "mask": ("m.png", body[1])},
                       data={"prompt": "a red sofa", "steps": str(steps), "seed": "1", "stream": "true"}) as resp:
        resp.raise_for_status()
        for line in resp.iter_lines():
            if not line.startswith("event: "):
                continue
            name = line[7:]
            counts[name] = counts.get(name, 0) + 1
            if name == "progress" and first is None:
                first = time.perf_counter() - t0
            if name in ("result", "error"):
                done = time.perf_counter() - t0
    if "result" not in counts:
        raise RuntimeError(f"stream ended without a result: {counts}")
    return dict(first=first, total=done, counts=counts)


def measure(kind: str, preset: str, repeats: int, threads: int) -> dict:
    cfg = SETTINGS[preset]
    server = Server(kind, preset, threads=threads)
    try:
        body = png_pair(cfg["size"], cfg["size"], 0)
        with httpx.Client(timeout=1800) as client:
            plain(client, server.url, body, cfg["steps"])  # warm-up: first calls of a shape set up kernels
            streamed(client, server.url, body, cfg["steps"])
            plains, streams = [], []
            for _ in range(repeats):  # alternated, so that a change of the machine's load hits both alike
                plains.append(plain(client, server.url, body, cfg["steps"]))
                streams.append(streamed(client, server.url, body, cfg["steps"]))
        p50 = statistics.median(plains) * 1e3
        s50 = statistics.median(s["total"] for s in streams) * 1e3
        return dict(server=kind, preset=preset, size=cfg["size"], steps=cfg["steps"], repeats=repeats, threads=threads,
                    startup_s=round(server.startup_s, 1), plain_ms=round(p50, 1), stream_ms=round(s50, 1),
                    overhead_ms=round(s50 - p50, 1), overhead_pct=round(100 * (s50 - p50) / p50, 1),
                    first_progress_ms=round(statistics.median(s["first"] for s in streams) * 1e3, 1),
                    events=streams[-1]["counts"], load_avg=[round(x, 2) for x in os.getloadavg()])
    finally:
        server.stop()


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--servers", default="fastapi,ray")
    p.add_argument("--presets", default="tiny,sd15")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1, help="OMP/torch threads of `asymvq serve` (Ray's stages: 1 "
                   "each); 1 keeps a loaded machine's spin-waiting threads out of the comparison")
    p.add_argument("--note", default="")
    p.add_argument("--out", default="bench/results/serve_stream.json")
    args = p.parse_args(argv)
    out = dict(machine_start=machine(), note=args.note, runs=[])
    for preset in args.presets.split(","):
        for kind in args.servers.split(","):
            row = measure(kind, preset, args.repeats, args.threads)
            out["runs"].append(row)
            print(json.dumps(row), flush=True)
    out["machine_end"] = machine()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
