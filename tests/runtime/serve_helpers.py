"""Servers started as a user starts them (`asymvq serve ...` in its own process on 127.0.0.1), raw HTTP clients."""
from __future__ import annotations

import io
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import PIL.Image

ASYMVQ = str(Path(sys.executable).with_name("asymvq"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """``asymvq serve ARGS`` on a free port; ``stop()`` sends SIGTERM and returns the seconds it took to exit."""

    def __init__(self, args: list[str], log: Path, startup_s: float = 180):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", OMP_NUM_THREADS="1")
        self.log_path = log
        self._log = open(log, "w")
        self.proc = subprocess.Popen([ASYMVQ, "serve", "--port", str(self.port), *args], stdout=self._log,
                                     stderr=subprocess.STDOUT, env=env, start_new_session=True)
        deadline = time.monotonic() + startup_s
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"asymvq serve exited with {self.proc.returncode}: {self.log()[-3000:]}")
            try:
                status, _, _ = request(self.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
                                       timeout=5)
                if status == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"asymvq serve not up after {startup_s} s: {self.log()[-3000:]}")
            time.sleep(0.5)

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 60) -> float:
        t0 = time.monotonic()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return time.monotonic() - t0

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)  # the server's own session: Ray's processes too
            self.proc.wait(30)


def png_pair(w: int = 32, h: int = 32, seed: int = 0) -> tuple[bytes, bytes]:
    rng = np.random.default_rng(seed)
    hole = np.zeros((h, w), np.uint8)
    hole[h // 4: 3 * h // 4, w // 4: 3 * w // 4] = 255
    out = []
    for img in (PIL.Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)), PIL.Image.fromarray(hole)):
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        out.append(buf.getvalue())
    return out[0], out[1]


def multipart(fields: dict[str, bytes | str]) -> tuple[bytes, str]:
    """(body, content type) of a multipart/form-data form."""
    boundary = uuid.uuid4().hex
    parts = []
    for name, value in fields.items():
        data = value.encode() if isinstance(value, str) else value
        disposition = f'form-data; name="{name}"' + (f'; filename="{name}.png"' if isinstance(value, bytes) else "")
        parts.append(f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + data + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def inpaint_request(seed: int = 0, steps: int = 2, extra_headers: str = "", path: str = "/v1/inpaint", **fields) -> bytes:
    image, mask = png_pair()
    body, ctype = multipart({"image": image, "mask": mask, "prompt": "a red sofa", "steps": str(steps),
                             "seed": str(seed), **fields})
    head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {ctype}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n{extra_headers}\r\n")
    return head.encode() + body


def inpaint_png_request(size: int, steps: int = 2, extra_headers: str = "", **fields) -> bytes:
    """``inpaint_request`` at ``size`` x ``size``."""
    image, mask = png_pair(size, size)
    body, ctype = multipart({"image": image, "mask": mask, "prompt": "a red sofa", "steps": str(steps), **fields})
    head = (f"POST /v1/inpaint HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {ctype}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n{extra_headers}\r\n")
    return head.encode() + body


def read_response(sock: socket.socket) -> tuple[int, dict, bytes]:
    """(status, headers, body) read until the server closes (requests are sent with Connection: close)."""
    data = b""
    while True:
        try:
            chunk = sock.recv(1 << 16)
        except ConnectionResetError:
            break
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    if not lines or not lines[0].startswith("HTTP/"):
        return 0, {}, data
    headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
    return int(lines[0].split()[1]), {k.lower(): v for k, v in headers.items()}, body


def request(port: int, raw: bytes, timeout: float = 120) -> tuple[int, dict, bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(raw)
        return read_response(sock)


def metric(port: int, name: str, **labels) -> float:
    from asymvq.serve.metrics import parse_metrics

    status, _, body = request(port, b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert status == 200
    return parse_metrics(body.decode()).get((name, tuple(sorted(labels.items()))), 0.0)


# -- where a process tree listens -------------------------------------------------------------------
def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it (from /proc: Linux only)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children.get(p, [])
    return out


def _proc_addr(hex_addr: str) -> str:
    host, port = hex_addr.split(":")
    raw = bytes.fromhex(host)
    if len(raw) == 4:
        ip = socket.inet_ntop(socket.AF_INET, raw[::-1])
    else:  # /proc/net/tcp6: four little-endian 32-bit words
        ip = socket.inet_ntop(socket.AF_INET6, b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4)))
    return f"{ip}:{int(port, 16)}"


def listening_sockets(pids: list[int]) -> dict[str, list[str]]:
    """{address:port: [process names]} of the TCP sockets in LISTEN state that ``pids`` hold open."""
    inodes: dict[str, set[str]] = {}
    for pid in pids:
        try:
            name = Path(f"/proc/{pid}/comm").read_text().strip()
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes.setdefault(target[8:-1], set()).add(f"{name}[{pid}]")
        except OSError:  # the process ended meanwhile
            continue
    out: dict[str, list[str]] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            if cols[3] == "0A" and cols[9] in inodes:  # 0A: TCP_LISTEN
                out.setdefault(_proc_addr(cols[1]), []).extend(sorted(inodes[cols[9]]))
    return out
