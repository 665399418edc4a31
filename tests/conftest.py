"""Suite-wide set-up.

Triton chooses compiler or CPU interpreter when a kernel is *defined*, so TRITON_INTERPRET
must be set before anything imports asymvq.kernels. The top-level conftest is imported
before any test module, in every xdist worker, whatever subset of tests runs.
"""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # after TRITON_INTERPRET is set

# diffusers' library logger takes the sys.stderr of its first use for its handler. The CLI imports diffusers lazily,
# so a first use inside typer's CliRunner.invoke would pin that command's stream, closed once it returns, and every
# later diffusers warning in the worker prints "--- Logging error ---" into the next test's stderr. Set up here, the
# handler holds pytest's own stream, open for the whole session. (The GPU check's image runs tests without diffusers.)
try:
    from diffusers.utils import logging as diffusers_logging
except ImportError:
    pass
else:
    diffusers_logging.get_logger("diffusers")


@pytest.fixture
def one_torch_thread():
    """torch at one intra-op thread for the test, restored after.

    CI runs two xdist workers on two cores: a second intra-op thread each only oversubscribes them.
    The runtime and property suites use it for every test (their conftests).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# --- Scheduling for `make test` (pytest -n 2 --dist loadfile --no-loadscope-reorder) --------------------
# A clean clone's suite is a few long files and many short ones on two workers. xdist's default order
# (files with most tests first) left the longest file, the Triton builds, to start last, and the C++ host's
# files, spread over both workers, had one wait on the other's engines export. So: the host's files are one
# unit of work (one worker exports the host engines once and runs them all), every other file is its own,
# and units start longest first. (xdist's own `loadgroup` cannot do it: under pytest 9 it no longer
# renames the items it groups.) The weights are the seconds of a clean-clone run here (2 cores, loaded,
# pytest --durations summed per file, rounded): only their order matters; a file not in the table starts
# after all of them, in collection order.
HEAVY_FIRST_S = {
    "tests/kernels/test_kernel_builds.py": 1150,
    "host": 1300,  # tests/host/ and tests/engines/test_aoti_engine.py
    "tests/export/test_atomic_export.py": 600,
    "tests/engines/test_engine_dir.py": 420,
    "tests/export/test_family_engines_flux.py": 400,  # weighed from their loaded runs, not the clean-clone one
    "tests/export/test_family_engines_sdxl.py": 350,
    "tests/test_gpu_check.py": 250,
    "tests/models/test_decoder_parity.py": 220,
    "tests/export/test_export_decoder_cli.py": 200,
    "tests/export/test_export_family.py": 180,
    "tests/runtime/test_ray_faults.py": 170,
    "tests/engines/test_openvino_engine.py": 160,
    "tests/models/test_decoder_family.py": 150,
    "tests/test_base_install.py": 120,
    "tests/kernels/test_triton_decoder.py": 120,
    "tests/runtime/test_ray_serve.py": 100,
    "tests/runtime/test_profiler.py": 90,
    "tests/engines/test_shape_ranges.py": 80,
    "tests/runtime/test_server_faults.py": 70,
}


def work_unit(nodeid: str) -> str:
    """The unit of work a test belongs to: the files of the shared AOTInductor engines (tests/aoti_engines.py)
    together, any other file alone."""
    path = nodeid.split("::", 1)[0]
    return "host" if path.startswith("tests/host/") or path == "tests/engines/test_aoti_engine.py" else path


def pytest_xdist_make_scheduler(config, log):
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class Units(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return work_unit(nodeid)

    return Units(config, log)


def pytest_collection_modifyitems(config, items):
    if not hasattr(config, "workerinput"):  # only the order the xdist controller hands out matters
        return
    first_seen = {u: i for i, u in enumerate(dict.fromkeys(work_unit(it.nodeid) for it in items))}
    items.sort(key=lambda it: (-HEAVY_FIRST_S.get(work_unit(it.nodeid), 0), first_seen[work_unit(it.nodeid)]))
