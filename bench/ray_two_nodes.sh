#!/usr/bin/env bash
# Two Ray nodes on one machine, each in its own network namespace, joined by a veth pair:
# the Ray head (ingress + denoise) in one, a worker (decode, pinned by a custom resource) in the other.
# Serves inpainting requests across them, prints which node ran each stage, tears everything down.
#
#   sudo bench/ray_two_nodes.sh [REQUESTS]        (root: it creates namespaces and a veth pair)
#
# The addresses (10.200.0.1/24, 10.200.0.2/24) exist only on the veth pair between the two namespaces:
# no traffic leaves them. Processes are stopped by the namespaces' own pid lists (never `ray stop`,
# which would stop every Ray on the machine).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-$PWD/.venv/bin/python}
RAY=${RAY:-$PWD/.venv/bin/ray}
REQUESTS=${1:-6}
HEAD_NS=asymvq-head WORKER_NS=asymvq-worker
HEAD_IP=10.200.0.1 WORKER_IP=10.200.0.2
export RAY_USAGE_STATS_ENABLED=0 PYTHONUNBUFFERED=1
# Ray's token authentication, with a token made for this run only, shared by head, worker and driver
WORK=$(mktemp -d /tmp/asymvq-two-nodes.XXXXXX)
export RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH="$WORK/auth_token"
"$PY" -c "import secrets, sys; open(sys.argv[1], 'w').write(secrets.token_hex(32))" "$RAY_AUTH_TOKEN_PATH"
chmod 600 "$RAY_AUTH_TOKEN_PATH"

stop_ns() {  # every process in one namespace: TERM, then KILL what is left
    local ns=$1 pids
    pids=$(ip netns pids "$ns" 2>/dev/null || true)
    [ -n "$pids" ] && kill -TERM $pids 2>/dev/null || true
    for _ in $(seq 1 20); do
        pids=$(ip netns pids "$ns" 2>/dev/null || true)
        [ -z "$pids" ] && break
        sleep 0.5
    done
    [ -n "$pids" ] && kill -KILL $pids 2>/dev/null || true
    ip netns del "$ns" 2>/dev/null || true
}
cleanup() {
    echo "== teardown"
    stop_ns "$WORKER_NS"
    stop_ns "$HEAD_NS"
    ip link del veth-asymvq-h 2>/dev/null || true
    rm -rf "$WORK"
    # `ray start --head` records its address for later `ray.init()` calls; `ray stop` is not used here, so forget it
    if grep -qs "^$HEAD_IP:" /tmp/ray/ray_current_cluster; then rm -f /tmp/ray/ray_current_cluster; fi
    echo "namespaces left: $(ip netns list | grep -c asymvq- || true)"
}
trap cleanup EXIT

echo "== network: $HEAD_NS ($HEAD_IP) <-veth-> $WORKER_NS ($WORKER_IP)"
ip netns add "$HEAD_NS"
ip netns add "$WORKER_NS"
ip link add veth-asymvq-h type veth peer name veth-asymvq-w
ip link set veth-asymvq-h netns "$HEAD_NS"
ip link set veth-asymvq-w netns "$WORKER_NS"
ip -n "$HEAD_NS" addr add "$HEAD_IP/24" dev veth-asymvq-h
ip -n "$WORKER_NS" addr add "$WORKER_IP/24" dev veth-asymvq-w
for ns in "$HEAD_NS" "$WORKER_NS"; do ip -n "$ns" link set lo up; done
ip -n "$HEAD_NS" link set veth-asymvq-h up
ip -n "$WORKER_NS" link set veth-asymvq-w up
ip netns exec "$HEAD_NS" "$PY" -c "import socket, sys; s = socket.socket(); s.settimeout(3)
print('head -> worker over the veth:', {0: 'open', 111: 'reachable (port closed)'}.get(s.connect_ex((sys.argv[1], 9)), 'unreachable'))" "$WORKER_IP"

echo "== ray head in $HEAD_NS"
t0=$(date +%s)
ip netns exec "$HEAD_NS" "$RAY" start --head --node-ip-address="$HEAD_IP" --port=6379 --num-cpus=1 \
    --include-dashboard=false --disable-usage-stats --resources='{"head_node": 1}' 2>&1 | grep -E "Ray runtime started|Local node IP|rror" || true
echo "== ray worker in $WORKER_NS"
ip netns exec "$WORKER_NS" "$RAY" start --address="$HEAD_IP:6379" --node-ip-address="$WORKER_IP" --num-cpus=1 \
    --disable-usage-stats --resources='{"decode_node": 1}' 2>&1 | grep -E "Ray runtime started|Local node IP|rror" || true
echo "cluster up in $(( $(date +%s) - t0 )) s"

echo "== serve across the two nodes (driver and HTTP in $HEAD_NS)"
ip netns exec "$HEAD_NS" "$PY" - "$HEAD_IP" "$REQUESTS" <<'EOF'
import io, sys, time
from concurrent.futures import ThreadPoolExecutor

import httpx, numpy as np, PIL.Image, ray
from ray import serve

from asymvq.serve.ray_serve import ray_app

head_ip, n = sys.argv[1], int(sys.argv[2])
ray.init(address=f"{head_ip}:6379", log_to_driver=False)
for node in sorted(ray.nodes(), key=lambda x: x["NodeManagerAddress"]):
    custom = {k: v for k, v in node["Resources"].items() if k.endswith("_node")}
    print(f"node {node['NodeManagerAddress']}: alive={node['Alive']} CPU={node['Resources'].get('CPU')} {custom}")
t0 = time.monotonic()
serve.start(proxy_location="HeadOnly", http_options={"host": head_ip, "port": 8000})
serve.run(ray_app(preset="tiny", denoise_resources={"head_node": 0.01}, decode_resources={"decode_node": 0.01},
                  batch_wait_ms=50), name="asymvq", route_prefix="/")
print(f"graph deployed in {time.monotonic() - t0:.1f} s")

def body(seed):
    rng = np.random.default_rng(seed)
    hole = np.zeros((64, 64), np.uint8); hole[16:48, 16:48] = 255
    out = []
    for img in (PIL.Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)), PIL.Image.fromarray(hole)):
        buf = io.BytesIO(); img.save(buf, format="PNG"); out.append(buf.getvalue())
    return out

def send(seed):
    image, mask = body(seed)
    r = httpx.post(f"http://{head_ip}:8000/v1/inpaint", timeout=300, data={"prompt": "a red sofa", "steps": "2", "seed": str(seed)},
                   files={"image": ("i.png", image, "image/png"), "mask": ("m.png", mask, "image/png")})
    return seed, r

with ThreadPoolExecutor(4) as pool:
    for seed, r in pool.map(send, range(n)):
        h = r.headers
        print(f"request seed={seed}: HTTP {r.status_code}, {len(r.content)} bytes PNG, {h.get('x-asymvq-latency-ms')} ms; "
              f"nodes: {h.get('x-asymvq-nodes')}; batch: {h.get('x-asymvq-batch')}")
        assert r.status_code == 200, r.text
nodes = {part.split("=")[0]: part.split("=")[1] for part in h["x-asymvq-nodes"].split(", ")}
assert nodes["decode"] != nodes["denoise"], nodes
print(f"OK: denoise ran on {nodes['denoise']}, decode on {nodes['decode']}: the service spans two nodes")
serve.shutdown()
ray.shutdown()
EOF
