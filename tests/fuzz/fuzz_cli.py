"""The command line both fuzzers share: ``--seeds DIR`` writes the seed inputs, ``--replay DIR...``
runs every input of the folders through the check (coverage runs use it), anything else is
atheris's own arguments (the fuzzer module then instruments and starts atheris)."""
from __future__ import annotations

import sys
from pathlib import Path


def handled_without_atheris(seeds, check) -> bool:
    """Carry out --seeds or --replay; True when one of them ran (the caller returns)."""
    if sys.argv[1:2] == ["--seeds"]:
        out = Path(sys.argv[2])
        out.mkdir(parents=True, exist_ok=True)
        for name, data in seeds().items():
            (out / name).write_bytes(data)
        return True
    if sys.argv[1:2] == ["--replay"]:
        files = [f for d in sys.argv[2:] for f in sorted(Path(d).iterdir()) if f.is_file()]
        for f in files:
            check(f.read_bytes())
        print(f"{len(files)} inputs replayed, no finding")
        return True
    return False
