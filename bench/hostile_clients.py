"""What a skeptical operator sends a server, one raw HTTP request at a time (``bench/serve_load.py soak --hostile``).

Each kind has its documented answer (docs/server.md#errors): a damaged PNG, a 1 MB prompt and a strength that
leaves no step are 400, an upload that stalls past the body deadline 408, a 20 KB header 431, a lying
Content-Length 413; an upload dropped half-way gets no answer (the server counts it as 499, without a traceback).
"""
from __future__ import annotations

import socket
import time

KINDS = ("damaged-png", "prompt-bomb", "no-step-strength", "stalled-upload", "dropped-upload", "big-header",
         "lying-length")
EXPECTED = {"damaged-png": 400, "prompt-bomb": 400, "no-step-strength": 400, "stalled-upload": 408, "big-header": 431,
            "lying-length": 413, "dropped-upload": None}
BOUNDARY = "soakboundary7d9"


def raw_form(fields: dict, extra_headers: str = "", length: int | None = None) -> bytes:
    parts = []
    for name, value in fields.items():
        data = value if isinstance(value, bytes) else value.encode()
        parts.append(f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode() + data + b"\r\n")
    body = b"".join(parts) + f"--{BOUNDARY}--\r\n".encode()
    head = (f"POST /v1/inpaint HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
            f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n"
            f"Content-Length: {len(body) if length is None else length}\r\n{extra_headers}\r\n")
    return head.encode() + body


def read_status(sock: socket.socket) -> int | None:
    data = b""
    try:
        while b"\r\n" not in data:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
    except OSError:
        return None
    parts = data.split(b" ", 2)
    return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else None


def hostile_request(port: int, kind: str, image: bytes, mask: bytes, body_timeout: float) -> bool:
    """One request of ``kind`` against 127.0.0.1:``port``; True when it got its documented answer."""
    fields = {"image": image, "mask": mask, "prompt": "a red sofa", "steps": "2"}
    raw = {"damaged-png": raw_form({**fields, "image": image[:60]}),
           "prompt-bomb": raw_form({**fields, "prompt": "x" * (1 << 20)}),
           "no-step-strength": raw_form({**fields, "strength": "0.1"}),
           "big-header": raw_form(fields, extra_headers=f"X-Junk: {'a' * 20_000}\r\n"),
           "lying-length": raw_form(fields, length=1 << 40)}.get(kind) or raw_form(fields)
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=body_timeout + 60) as sock:
            if kind in ("stalled-upload", "dropped-upload"):
                sock.sendall(raw[: len(raw) // 2])
                if kind == "dropped-upload":
                    time.sleep(0.2)
                    return True  # its answer is the server's: the 499 count and a log without a traceback
            else:
                sock.sendall(raw)
            return read_status(sock) == EXPECTED[kind]
    except OSError:
        return False
