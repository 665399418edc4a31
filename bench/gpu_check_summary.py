"""bench/gpu_check.sh's summary: the run's state as one JSON document on stdout.

    python bench/gpu_check_summary.py WORK BUDGET DRY TOTAL_S FINAL

Every step so far (status, exit code, seconds, log tail), the pytest outcomes (from the JSON
lines written as tests finish, or the junit XML once pytest exited), and every small result
file inlined, so that summary.json alone, one of the few files the device tool returns, holds
what matters; the archive next to it holds everything.
"""
import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

INLINE_MAX = 256 * 1024  # bytes: result files up to this size are inlined

work, budget, dry, total, final = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "1", int(sys.argv[4]), sys.argv[5] == "1"
steps = [json.loads(line) for line in (work / "steps.jsonl").read_text().splitlines() if line.strip()]
for s in steps:
    log = work / s["log"]
    s["log_tail"] = log.read_text(errors="replace").splitlines()[-15:] if log.exists() else []
running = sorted(p.stem for p in work.glob("*.log") if p.stem not in {s["step"] for s in steps} | {"install", "summary"})
summary = {"schema": "asymvq.gpu_check/2", "dry_run": dry, "final": final, "budget_s": budget, "total_s": total,
           "archive": f"gpu-check-{work.name.removeprefix('asymvq-gpu-check-')}.tar.gz",
           "steps": steps, "running": running}

cases = []
jsonl = work / "pytest-gpu.jsonl"
if jsonl.exists():
    cases = [json.loads(line) for line in jsonl.read_text().splitlines() if line.strip()]
junit = work / "pytest-gpu.xml"
if junit.exists():
    try:
        root = ET.parse(junit).getroot()
        suite = root if root.tag == "testsuite" else root.find("testsuite")
        summary["pytest_gpu_totals"] = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    except (ET.ParseError, AttributeError) as e:
        summary["pytest_gpu_totals"] = {"error": f"{type(e).__name__}: {e}"}
if cases:
    counts = {}
    for c in cases:
        counts[c["outcome"]] = counts.get(c["outcome"], 0) + 1
    summary["pytest_gpu"] = {"counts": counts, "not_passed": [c for c in cases if c["outcome"] not in ("passed", "skipped")],
                             "slowest": sorted(cases, key=lambda c: -c.get("seconds", 0))[:10]}

results = {}
for p in sorted(work.glob("*.json")):
    if p.name == "summary.json":
        continue
    try:
        results[p.name] = json.loads(p.read_text()) if p.stat().st_size <= INLINE_MAX else f"{p.stat().st_size} B: in the archive"
    except (OSError, json.JSONDecodeError) as e:  # a file being rewritten right now
        results[p.name] = f"unreadable now ({type(e).__name__}): in the archive"
summary["results"] = results
summary["files"] = sorted(p.name for p in work.iterdir() if p.is_file())
print(json.dumps(summary, indent=2))
