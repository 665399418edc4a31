"""Property-based tests generated from /openapi.json (schemathesis) against ``asymvq serve`` as a user starts it:
no answer is a 500 and every answer conforms to the schema (status, content type, body). Bounded in time."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("schemathesis")
from serve_helpers import ServerProcess

ST = shutil.which("st", path=str(Path(sys.executable).parent))
CHECKS = "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance"


def test_schemathesis_finds_no_server_error_and_no_schema_mismatch(tmp_path):
    assert ST, "schemathesis's `st` is not installed next to this Python"
    srv = ServerProcess(["--preset", "tiny", "--max-steps", "4"], tmp_path / "serve.log")
    try:
        run = subprocess.run([ST, "run", f"{srv.url}/openapi.json", "--checks", CHECKS, "--phases", "coverage,fuzzing",
                              "--max-examples", "20", "--max-time", "25", "--request-timeout", "30",
                              "--generation-deterministic", "--workers", "1", "--no-color"],
                             capture_output=True, text=True, timeout=180)
    finally:
        srv.stop()
    out = run.stdout + run.stderr
    assert run.returncode == 0, out[-4000:]
    assert "Tested: 8" in out and " passed" in out, out[-2000:]
    assert "Traceback" not in srv.log(), srv.log()[-3000:]
