"""Load and soak against both HTTP servers: `asymvq serve` (FastAPI, one process) and `asymvq serve --ray`.

Loopback only, bounded request loops. Each server runs as its own `asymvq serve` process on 127.0.0.1;
clients are threads with one httpx client each; images are random PNGs with a centred hole.

    python bench/serve_load.py load [--presets tiny,sd15] [--clients 1,4,8] [--out bench/results/serve_load.json]
    python bench/serve_load.py soak --server fastapi|ray [--minutes 10] [--clients 4] [--hostile 2] [--out ...]
    python bench/serve_load.py plot-soak bench/results/soak_fastapi.json bench/results/soak_ray.json --out ...png

`load` reports per server, preset and client count: requests/s, p50/p99 latency, failures, mean batch size
(per request, from /metrics) and the per-request overhead over the pipeline's own stage time
(client latency minus the Server-Timing model stages; Ray's minus FastAPI's is what Ray adds).
`soak` logs every 30 s: requests, failures, interval p50, and the RSS of the whole server process tree; at the
end, answers by status, p50/p99 and RSS growth. `--hostile N` adds N clients cycling through what a skeptical
operator sends (bench/hostile_clients.py: damaged PNG, prompt bomb, stalled and dropped uploads, big headers...),
each kind counted as documented or failed, plus the server's own count of answers by status (499 included).
"""
from __future__ import annotations

import argparse
import collections
import io
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import PIL.Image
from bench_common import cpu_record
from hostile_clients import KINDS as HOSTILE
from hostile_clients import hostile_request

ROOT = Path(__file__).resolve().parents[1]
ASYMVQ = str(Path(sys.executable).with_name("asymvq"))
MODEL_STAGES = ("text_encode", "vae_encode", "unet_step", "scheduler_step", "decode")
SETTINGS = {  # preset -> (W, H), steps; a second size for half the requests (two sizes, as a real mix)
    "tiny": dict(sizes=((64, 64), (48, 64)), steps=2),
    "sd15": dict(sizes=((256, 256),), steps=2),
}


def png_pair(w: int, h: int, seed: int) -> tuple[bytes, bytes]:
    rng = np.random.default_rng(seed)
    hole = np.zeros((h, w), np.uint8)
    hole[h // 4: 3 * h // 4, w // 4: 3 * w // 4] = 255
    out = []
    for img in (PIL.Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)), PIL.Image.fromarray(hole)):
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        out.append(buf.getvalue())
    return out[0], out[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- the server process -------------------------------------------------------------------------
class Server:
    def __init__(self, kind: str, preset: str, *, threads: int = 2, startup_s: float = 900, dtype: str = "fp32",
                 extra: tuple = ()):
        self.kind, self.preset, self.port = kind, preset, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [ASYMVQ, "serve", "--preset", preset, "--port", str(self.port), "--max-steps", "50", "--dtype", dtype,
               *extra]
        env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", OMP_NUM_THREADS=str(threads))
        if kind == "ray":
            # one CPU (and torch thread) per stage: the two stages overlap on the two cores
            cmd += ["--ray", "--cpus-per-denoise", "1", "--cpus-per-decode", "1"]
        self.log = open(ROOT / "out" / f"serve_{kind}_{preset}.log", "w") if (ROOT / "out").is_dir() else subprocess.DEVNULL
        t0 = time.monotonic()
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{kind} server exited with {self.proc.returncode} before serving")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() - t0 > startup_s:
                self.stop()
                raise RuntimeError(f"{kind} server did not answer /healthz in {startup_s} s")
            time.sleep(1)
        self.startup_s = time.monotonic() - t0

    def metrics(self) -> dict:
        from asymvq.serve.metrics import parse_metrics

        return parse_metrics(httpx.get(f"{self.url}/metrics", timeout=30).text)

    def rss_mb(self) -> float:
        """Resident memory of the server and every process under it (Ray's raylet, GCS, replicas)."""
        children: dict[int, list[int]] = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    ppid = int(open(f"/proc/{entry}/stat").read().rsplit(")", 1)[1].split()[1])
                except (OSError, IndexError, ValueError):
                    continue
                children.setdefault(ppid, []).append(int(entry))
        total, todo = 0, [self.proc.pid]
        while todo:
            pid = todo.pop()
            todo += children.get(pid, [])
            try:
                for line in open(f"/proc/{pid}/status"):
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
            except OSError:
                pass
        return total / 1024

    def stop(self) -> float:
        t0 = time.monotonic()
        # SIGTERM to the CLI only (SIGINT is ignored by processes started in the background): it shuts Serve
        # and the Ray it started down
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        took = time.monotonic() - t0
        try:  # anything of this server's session still alive (its own group, started here)
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        return took


# -- clients ------------------------------------------------------------------------------------
def one_request(client: httpx.Client, url: str, body: tuple[bytes, bytes], seed: int, steps: int) -> dict:
    t0 = time.perf_counter()
    try:
        resp = client.post(f"{url}/v1/inpaint", files={"image": ("i.png", body[0], "image/png"),
                                                       "mask": ("m.png", body[1], "image/png")},
                           data={"prompt": f"a red sofa {seed % 5}", "steps": str(steps), "seed": str(seed)})
        ok = resp.status_code == 200
    except httpx.HTTPError:
        resp, ok = None, False
    latency = time.perf_counter() - t0
    stages = {}
    if ok:
        for item in resp.headers.get("Server-Timing", "").split(", "):
            name, _, dur = item.partition(";dur=")
            stages[name] = float(dur)
    return dict(ok=ok, latency=latency, stages=stages, status=None if resp is None else resp.status_code)


def run_clients(url: str, clients: int, per_client: int, settings: dict, seed0: int = 0) -> tuple[list, float]:
    bodies = [png_pair(w, h, i) for i, (w, h) in enumerate(settings["sizes"])]
    results: list = []
    lock = threading.Lock()

    def client_loop(c: int):
        with httpx.Client(timeout=1800) as client:
            for k in range(per_client):
                seed = seed0 + c * per_client + k
                r = one_request(client, url, bodies[seed % len(bodies)], seed, settings["steps"])
                with lock:
                    results.append(r)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client_loop, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results, time.perf_counter() - t0


def summarize(results: list, wall: float, before: dict, after: dict, stage: str) -> dict:
    ok = [r for r in results if r["ok"]]
    lat = sorted(r["latency"] * 1e3 for r in ok)
    model = [sum(r["stages"].get(s, 0.0) for s in MODEL_STAGES) for r in ok]
    key_sum, key_count = ("asymvq_batch_size_sum", (("stage", stage),)), ("asymvq_batch_size_count", (("stage", stage),))
    n = after.get(key_count, 0) - before.get(key_count, 0)
    return dict(
        requests=len(results), failures=len(results) - len(ok), wall_s=round(wall, 2),
        req_per_s=round(len(ok) / wall, 3),
        p50_ms=round(float(np.percentile(lat, 50)), 1) if lat else None,
        p99_ms=round(float(np.percentile(lat, 99)), 1) if lat else None,
        mean_batch=round((after.get(key_sum, 0) - before.get(key_sum, 0)) / n, 2) if n else None,
        model_ms_median=round(statistics.median(model), 1) if model else None,
        overhead_ms_median=round(statistics.median(r["latency"] * 1e3 - m for r, m in zip(ok, model)), 1) if ok else None,
    )


def mem_available_gb() -> float:
    for line in open("/proc/meminfo"):
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 2**20
    return 0.0


def machine() -> dict:
    """The machine for a result JSON: cores, load average, and the CPU's model and features (they change between
    machines: ``bench_common.cpu_record``)."""
    return dict(cpus=os.cpu_count(), load_avg=[round(x, 2) for x in os.getloadavg()], python=platform.python_version(),
                processor=platform.processor() or platform.machine(), cpu=cpu_record())


def cmd_load(args) -> None:
    out = dict(machine_start=machine(), note=args.note, runs=[])
    for preset in args.presets.split(","):
        clients = [int(c) for c in (args.sd15_clients if preset == "sd15" else args.clients).split(",")]
        dtype = args.sd15_dtype if preset == "sd15" else "fp32"
        for kind in args.servers.split(","):
            avail = mem_available_gb()
            if preset == "sd15" and avail < args.sd15_min_free_gb:
                out["runs"].append(dict(server=kind, preset=preset, skipped=f"only {avail:.1f} GB free"))
                print(f"{kind} {preset}: skipped, only {avail:.1f} GB of memory free", flush=True)
                continue
            server = Server(kind, preset, dtype=dtype)
            print(f"{kind} {preset}: up in {server.startup_s:.1f} s", flush=True)
            try:
                # warm-up: both sizes, alone and concurrent (first calls of a shape set up kernels)
                run_clients(server.url, 1, len(SETTINGS[preset]["sizes"]), SETTINGS[preset], seed0=10_000)
                run_clients(server.url, 2, len(SETTINGS[preset]["sizes"]), SETTINGS[preset], seed0=20_000)
                for c in clients:
                    per = args.sd15_per_client if preset == "sd15" else max(args.per_client, 12 // c)
                    before = server.metrics()
                    results, wall = run_clients(server.url, c, per, SETTINGS[preset])
                    row = dict(server=kind, preset=preset, dtype=dtype, clients=c, steps=SETTINGS[preset]["steps"],
                               sizes=SETTINGS[preset]["sizes"], startup_s=round(server.startup_s, 1),
                               load_avg=round(os.getloadavg()[0], 2),
                               **summarize(results, wall, before, server.metrics(),
                                           "denoise" if kind == "ray" else "pipeline"))
                    out["runs"].append(row)
                    print(json.dumps(row), flush=True)
            finally:
                print(f"{kind} {preset}: stopped in {server.stop():.1f} s", flush=True)
    out["machine_end"] = machine()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1))
    print(f"wrote {args.out}")


def cmd_soak(args) -> None:
    settings = SETTINGS["tiny"]
    server = Server(args.server, "tiny", extra=("--body-timeout", str(args.body_timeout)))
    log = dict(server=args.server, preset="tiny", clients=args.clients, minutes=args.minutes, machine_start=machine(),
               startup_s=round(server.startup_s, 1), samples=[])
    bodies = [png_pair(w, h, i) for i, (w, h) in enumerate(settings["sizes"])]
    stop = threading.Event()
    window: list = []
    totals = dict(ok=0, failed=0)
    statuses: collections.Counter = collections.Counter()  # the valid requests' answers, by status
    hostile: dict = {k: collections.Counter() for k in HOSTILE}  # per kind: as documented or failed
    latencies: list[float] = []
    lock = threading.Lock()

    def hostile_loop(c: int):
        k = c
        while not stop.is_set():
            kind = HOSTILE[k % len(HOSTILE)]
            k += 1
            good = hostile_request(server.port, kind, *bodies[0], args.body_timeout)
            with lock:
                hostile[kind]["as documented" if good else "failed"] += 1
            time.sleep(0.5)

    def client_loop(c: int):
        seed = c * 1_000_000
        with httpx.Client(timeout=300) as client:
            while not stop.is_set():
                r = one_request(client, server.url, bodies[seed % len(bodies)], seed, settings["steps"])
                seed += 1
                with lock:
                    window.append(r)
                    totals["ok" if r["ok"] else "failed"] += 1
                    statuses[str(r["status"] or "connection error")] += 1
                    if r["ok"]:
                        latencies.append(r["latency"] * 1e3)

    threads = [threading.Thread(target=client_loop, args=(c,)) for c in range(args.clients)]
    threads += [threading.Thread(target=hostile_loop, args=(c,)) for c in range(args.hostile)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    try:
        while time.monotonic() - t0 < args.minutes * 60:
            time.sleep(min(args.every, max(0.0, args.minutes * 60 - (time.monotonic() - t0))))
            with lock:
                lat = sorted(r["latency"] * 1e3 for r in window if r["ok"])
                n, window[:] = len(window), []
                sample = dict(t_s=round(time.monotonic() - t0, 1), requests=totals["ok"], failed=totals["failed"],
                              interval_requests=n, interval_p50_ms=round(float(np.percentile(lat, 50)), 1) if lat else None,
                              rss_mb=round(server.rss_mb(), 1), load_avg=round(os.getloadavg()[0], 2))
            log["samples"].append(sample)
            print(json.dumps(sample), flush=True)
    finally:
        stop.set()
        for t in threads:
            t.join()
        try:
            log["server_answers"] = {dict(labels)["status"]: v for (name, labels), v in server.metrics().items()
                                     if name == "asymvq_requests_total"}
        except Exception as exc:  # noqa: BLE001 - the client-side figures still stand
            log["server_answers"] = f"unreadable: {exc}"
        log["shutdown_s"] = round(server.stop(), 1)
    s = log["samples"]
    warm = s[min(args.warmup_samples, len(s) - 1)]["rss_mb"]
    log.update(total_ok=totals["ok"], total_failed=totals["failed"], rss_after_warmup_mb=warm, rss_end_mb=s[-1]["rss_mb"],
               rss_growth_pct=round(100 * (s[-1]["rss_mb"] - warm) / warm, 2), machine_end=machine(),
               answers_by_status=dict(statuses), hostile={k: dict(v) for k, v in hostile.items() if v},
               p50_ms=_pct(latencies, 50), p99_ms=_pct(latencies, 99), body_timeout_s=args.body_timeout)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(log, indent=1))
    print(f"{args.server}: {totals['ok']} ok, {totals['failed']} failed {dict(statuses)}, p50/p99 {log['p50_ms']} / "
          f"{log['p99_ms']} ms, RSS {warm:.0f} -> {s[-1]['rss_mb']:.0f} MB ({log['rss_growth_pct']:+.2f} %); "
          f"hostile {log['hostile']}; the server counted {log['server_answers']}; wrote {args.out}")


def _pct(values: list, q: float):
    return round(float(np.percentile(values, q)), 1) if values else None


def cmd_plot_soak(args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for path in args.logs:
        log = json.loads(Path(path).read_text())
        t = [x["t_s"] / 60 for x in log["samples"]]
        label = f"{log['server']} ({log['total_ok']} ok, {log['total_failed']} failed, RSS {log['rss_growth_pct']:+.1f} %)"
        axes[0].plot(t, [x["rss_mb"] for x in log["samples"]], marker="o", label=label)
        edges = [0.0] + [x["t_s"] for x in log["samples"]]
        axes[1].plot(t, [x["interval_requests"] / (b - a) for x, a, b in zip(log["samples"], edges, edges[1:])],
                     marker="o", label=log["server"])
    axes[0].set(xlabel="minutes", ylabel="RSS of the server process tree (MB)", title="memory under a 4-client soak")
    axes[1].set(xlabel="minutes", ylabel="requests/s (30 s windows)", title="throughput (tiny preset, 2 steps)")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    load = sub.add_parser("load")
    load.add_argument("--presets", default="tiny,sd15")
    load.add_argument("--servers", default="fastapi,ray")
    load.add_argument("--clients", default="1,4,8")
    load.add_argument("--per-client", type=int, default=6, help="requests per client (tiny)")
    load.add_argument("--sd15-clients", default="1,4")
    load.add_argument("--sd15-per-client", type=int, default=1)
    load.add_argument("--sd15-dtype", default="fp32", help="bf16 halves the ~4.5 GB of fp32 weights")
    load.add_argument("--sd15-min-free-gb", type=float, default=5.0, help="skip a server below this much free memory")
    load.add_argument("--note", default="")
    load.add_argument("--out", default="bench/results/serve_load.json")
    soak = sub.add_parser("soak")
    soak.add_argument("--server", choices=("fastapi", "ray"), required=True)
    soak.add_argument("--minutes", type=float, default=10)
    soak.add_argument("--clients", type=int, default=4)
    soak.add_argument("--every", type=float, default=30)
    soak.add_argument("--warmup-samples", type=int, default=1, help="samples before the RSS baseline")
    soak.add_argument("--hostile", type=int, default=0, help="extra clients sending hostile requests (see above)")
    soak.add_argument("--body-timeout", type=float, default=5.0, help="the server's --body-timeout (stalled uploads)")
    soak.add_argument("--out", required=True)
    plot = sub.add_parser("plot-soak")
    plot.add_argument("logs", nargs="+")
    plot.add_argument("--out", required=True)
    args = p.parse_args(argv)
    {"load": cmd_load, "soak": cmd_soak, "plot-soak": cmd_plot_soak}[args.cmd](args)


if __name__ == "__main__":
    main()
