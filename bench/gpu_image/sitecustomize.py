"""Make this interpreter lack what the GPU machine's image lacks (bench/gpu_check.sh --dry-run).

On PYTHONPATH, Python imports this at start-up. Every top-level module named in ASYMVQ_ABSENT
(comma-separated) then fails to import with ModuleNotFoundError, as on the GPU image where it
is not installed, so a dry run here cannot pass on a package only this machine has.
"""
import os
import sys

_ABSENT = frozenset(n.strip() for n in os.environ.get("ASYMVQ_ABSENT", "").split(",") if n.strip())


class _Absent:
    @staticmethod
    def find_spec(name, path=None, target=None):
        if name.partition(".")[0] in _ABSENT:
            raise ModuleNotFoundError(f"No module named {name!r} (absent on the GPU image: ASYMVQ_ABSENT)", name=name)
        return None


if _ABSENT:
    sys.meta_path.insert(0, _Absent)
