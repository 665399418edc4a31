"""pytest plugin: one JSON line per test as it finishes (``-p pytest_jsonl --jsonl FILE``).

junit XML is written only when pytest exits; a GPU check cut short by its time limit would
bring back nothing. This file grows test by test (bench/gpu_check.sh reads it into summary.json).
"""
from __future__ import annotations

import json

_out = None


def pytest_addoption(parser):
    parser.addoption("--jsonl", default=None, help="append one JSON line per test outcome to this file")


def pytest_configure(config):
    global _out
    path = config.getoption("jsonl")
    # xdist workers append too: one line per write, line-buffered, so lines never interleave mid-line
    _out = open(path, "a", buffering=1) if path and not hasattr(config, "workerinput") else None  # kept open for the session


def pytest_unconfigure(config):
    if _out is not None:
        _out.close()


def _write(row):
    if _out is not None:
        _out.write(json.dumps(row) + "\n")


def pytest_runtest_logreport(report):
    # the call phase decides, except a setup that failed or skipped (no call phase then)
    if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
        row = {"test": report.nodeid, "outcome": report.outcome, "when": report.when, "seconds": round(report.duration, 3)}
        if report.outcome == "failed":
            row["message"] = str(report.longrepr)[-1500:]
        _write(row)


def pytest_collectreport(report):
    if report.outcome == "failed":
        _write({"test": report.nodeid, "outcome": "error", "when": "collect", "message": str(report.longrepr)[-1500:]})
