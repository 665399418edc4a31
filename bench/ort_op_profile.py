"""Where ONNX Runtime's CPU time goes, by op type, for one run of an exported decoder.

ONNX Runtime's own profiler (``SessionOptions.enable_profiling``) over the second of two runs
(the first warms up), summed by op type. Used to show that the fp32 decoder is bound by its
convolutions (bench/decoder_cpu.py's JSON has the end-to-end times).

    .venv/bin/python bench/ort_op_profile.py [--onnx out/bench-cache/decoder-*/decoder.onnx] [--threads 2]

Default input: the x1.5 decoder that bench/decoder_cpu.py exported (run that first); 256x256.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import time
from pathlib import Path

import numpy as np
from bench_common import cpu_record, loadavg

HERE = Path(__file__).parent
CACHE = HERE.parent / "out" / "bench-cache"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--onnx", type=Path, default=None, help="decoder.onnx (default: bench/decoder_cpu.py's export)")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "decoder_ort_ops.json")
    args = ap.parse_args()
    import onnxruntime as ort

    onnx = args.onnx or next(iter(sorted(CACHE.glob("decoder-*/decoder.onnx"))), None)
    if onnx is None or not onnx.is_file():
        raise SystemExit(f"--onnx: no decoder export found under {CACHE}; run bench/decoder_cpu.py first")
    so = ort.SessionOptions()
    so.enable_profiling = True
    so.intra_op_num_threads = args.threads
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(str(onnx), so, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    s = args.size
    feeds = {"latent": rng.standard_normal((1, 4, s // 8, s // 8), dtype=np.float32),
             "image": rng.random((1, 3, s, s), dtype=np.float32) * 2 - 1,
             "mask": (rng.random((1, 1, s, s)) > 0.5).astype(np.float32)}
    load = loadavg()
    session.run(None, feeds)
    t = time.perf_counter()
    session.run(None, feeds)
    seconds = time.perf_counter() - t
    trace = session.end_profiling()
    events = [e for e in json.load(open(trace)) if e.get("cat") == "Node"]
    os.remove(trace)
    by_op: collections.Counter = collections.Counter()
    for e in events[len(events) // 2:]:  # the second run's nodes
        by_op[e["args"].get("op_name", "?")] += e["dur"] / 1e6
    result = {"what": f"ONNX Runtime CPU, {onnx.parent.name}/{onnx.name}, {s}x{s}, batch 1, --threads {args.threads}",
              "onnxruntime": ort.__version__, "cpu": cpu_record(), "load_average_before": load, "run_s": round(seconds, 3),
              "seconds_by_op_type": {k: round(v, 3) for k, v in by_op.most_common()}}
    print(f"{result['what']}: {seconds:.2f} s (load average {load[0]})")
    for op, sec in by_op.most_common(10):
        print(f"  {op:<28} {sec:7.3f} s  {100 * sec / sum(by_op.values()):5.1f} %")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
