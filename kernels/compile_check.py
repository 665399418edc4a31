"""Compile the kernels for real GPU targets without a GPU: registers, spills, shared memory.

Triton compiles to PTX and, with the ptxas it bundles, to cubin for any NVIDIA target; only the
launch needs a device. So:

1. ``record()``: the host wrappers run on torch's meta device (shapes, no data) and every launch
   they would make is recorded instead (kernel, arguments, constexprs), through the wrappers'
   own choices of tiles, splits and flags;
2. ``plan()``: for each target a stand-in Triton driver answers "this is an sm_80 / sm_90", the
   autotuner's own pruning picks the configs it would offer there, and the launches are reduced
   to distinct builds (Triton's binder: same kernel + constexprs + dtypes + alignment
   specialisation == one build);
3. ``compile_all()``: each build is compiled (``JITFunction.warmup``) in a pool of processes,
   ptxas's ``-v`` report parsed; results are cached under ``build/kernel-builds/`` keyed by the
   kernel's source hash, the specialisation, the options and the Triton version;
4. ``problems()``: a compile error, shared memory over the target's limit, or a config the
   autotuner offers that spills registers.

Run where the kernels are defined for the compiler (TRITON_INTERPRET unset).
``tests/kernels/kernel_builds.py`` drives it over the decoder's presets and dtypes.
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib
import io
import json
import os
import re
import tempfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.backends.driver import DriverBase
from triton.runtime.autotuner import Autotuner
from triton.runtime.jit import JITFunction

from . import _common

TARGETS = {"sm_80": 80, "sm_90": 90}
_WRAPPER_MODULES = ("asymvq.kernels.conv", "asymvq.kernels.group_norm", "asymvq.kernels.mask_blend")


class StandInDriver(DriverBase):
    """What Triton asks of a driver to compile (not to launch) for compute capability ``capability``.

    The capability doubles as the device index, so each target gets its own binder and kernel
    cache inside every JITFunction (they are keyed by device).
    """

    def __init__(self, capability: int):
        self.capability = capability

    @classmethod
    def is_active(cls):
        return False

    def map_python_to_cpp_type(self, ty: str) -> str:
        return ty

    def get_current_target(self):
        return GPUTarget("cuda", self.capability, 32)

    def get_current_device(self):
        return self.capability

    def get_current_stream(self, device=None):
        return 0

    def get_active_torch_device(self):
        return torch.device("meta")

    def get_device_interface(self):
        return torch.cuda

    def get_benchmarker(self):
        raise RuntimeError("the stand-in driver compiles only; there is no device to time on")


@contextlib.contextmanager
def stand_in(capability: int):
    from triton.runtime.driver import driver

    previous = driver._active  # None until something asked: reset_active() would look for a real GPU
    driver.set_active(StandInDriver(capability))
    try:
        yield
    finally:
        driver._active = previous


@dataclass
class Launch:
    module: str  # where the kernel is defined
    name: str  # its name there (an Autotuner or a JITFunction)
    args: tuple
    kwargs: dict


@contextlib.contextmanager
def record():
    """Record the launches the host wrappers make, instead of making them; tensors on ``meta``."""
    if _common.interpreting():
        raise RuntimeError("compile_check needs the kernels defined for the compiler: unset TRITON_INTERPRET")
    launches: list[Launch] = []

    def on_meta(*tensors):
        devices = {t.device.type for t in tensors if t is not None}
        if devices != {"meta"}:
            raise ValueError(f"compile_check.record: expected meta tensors, got {sorted(devices)}")

    def snapshot(args):
        # Only dtype and alignment reach the compiler; a one-element meta tensor keeps both
        # (data_ptr 0, like a CUDA allocation's 256-byte alignment) and does not change when
        # the caller later converts the module whose parameter it was.
        return tuple(torch.empty(1, dtype=a.dtype, device="meta") if isinstance(a, torch.Tensor) else a for a in args)

    def autotuned(self, *args, grid=None, warmup=False, **kwargs):
        launches.append(Launch(self.base_fn.__module__, self.base_fn.__name__, snapshot(args), kwargs))

    def jitted(self, *args, grid=None, warmup=False, **kwargs):
        launches.append(Launch(self.module, self.fn.__name__, snapshot(args), kwargs))

    modules = [importlib.import_module(m) for m in _WRAPPER_MODULES]
    saved = [(m, m.check_device) for m in modules], Autotuner.run, JITFunction.run
    for m in modules:
        m.check_device = on_meta
    Autotuner.run, JITFunction.run = autotuned, jitted
    try:
        yield launches
    finally:
        for m, f in saved[0]:
            m.check_device = f
        Autotuner.run, JITFunction.run = saved[1], saved[2]


@dataclass
class Build:
    target: str
    module: str
    name: str
    args: tuple  # tensors replaced by their dtype name: only dtype and alignment reach the compiler
    kwargs: dict  # constexprs, tile sizes, num_warps, num_stages
    key: str  # Triton's own: kernel source hash, specialisation, options, Triton version
    autotuned: bool
    uses: int = 1  # launches (over shapes, presets, dtypes) that need this build
    result: dict = field(default_factory=dict)

    @property
    def config(self) -> str:
        k = self.kwargs
        if "BLOCK_M" in k:
            return f"{k['BLOCK_M']}x{k['BLOCK_N']}x{k['BLOCK_K']}/w{k['num_warps']}/s{k['num_stages']}"
        tiles = "x".join(str(v) for n, v in sorted(k.items()) if n.startswith(("BLOCK", "SPLIT")))
        return f"{tiles}/w{k.get('num_warps', 4)}"

    @property
    def variant(self) -> str:
        """The constexpr flags and the dtype: what distinguishes builds of one kernel and config."""
        flags = {n: v for n, v in self.kwargs.items()
                 if n.isupper() and not n.startswith(("BLOCK", "SPLIT", "DOT_PRECISION")) and n != "PAD"}
        dtypes = sorted({a for a in self.args if isinstance(a, str) and a.startswith("torch.")} - {"torch.float32"})
        return ",".join(f"{n}={int(v) if isinstance(v, bool) else v}" for n, v in flags.items()) + (
            f" {dtypes[0][6:]}" if dtypes else " float32")


def _kernel(module: str, name: str):
    return getattr(importlib.import_module(module), name)


def _describe(a):
    return str(a.dtype) if isinstance(a, torch.Tensor) else a


def _meta(a):
    if isinstance(a, str) and a.startswith("torch."):
        return torch.empty(1, dtype=getattr(torch, a[6:]), device="meta")
    return a


def plan(launches: list[Launch], targets=TARGETS) -> list[Build]:
    """The distinct builds the launches need on each target, with the configs the autotuner offers there."""
    builds: dict[str, Build] = {}
    for target, cap in targets.items():
        with stand_in(cap):
            for launch in launches:
                kernel = _kernel(launch.module, launch.name)
                if isinstance(kernel, Autotuner):
                    kernel.nargs = dict(zip(kernel.arg_names, launch.args))
                    offered = [c.all_kwargs() for c in kernel.prune_configs(launch.kwargs)]
                    kernel.nargs, fn = None, kernel.fn
                else:
                    offered, fn = [{}], kernel
                for config in offered:
                    kwargs = {**launch.kwargs, **config}
                    kwargs.setdefault("num_warps", 4)
                    _, _, _, _, binder = fn.device_caches[cap]
                    _, specialization, options = binder(*launch.args, **kwargs)
                    key = hashlib.sha256(repr((fn.cache_key, target, specialization, options, triton.__version__))
                                         .encode()).hexdigest()[:24]
                    if key in builds:
                        builds[key].uses += 1
                        continue
                    builds[key] = Build(target, launch.module, launch.name, tuple(map(_describe, launch.args)),
                                        kwargs, key, isinstance(kernel, Autotuner))
    return list(builds.values())


_PTXAS = {
    "regs": re.compile(r"Used (\d+) registers"),
    "spill_stores": re.compile(r"(\d+) bytes spill stores"),
    "spill_loads": re.compile(r"(\d+) bytes spill loads"),
    "stack": re.compile(r"(\d+) bytes stack frame"),
}


def _compile_one(build: Build) -> dict:
    """In a worker: compile one build, return what ptxas and Triton report (or the error)."""
    from triton import knobs

    knobs.nvidia.dump_ptxas_log = True
    kernel = _kernel(build.module, build.name)
    fn = kernel.fn if isinstance(kernel, Autotuner) else kernel
    log = io.StringIO()
    try:
        with stand_in(TARGETS[build.target]), contextlib.redirect_stdout(log):
            compiled = fn.warmup(*map(_meta, build.args), grid=(1,), **build.kwargs)
    except Exception as e:  # noqa: BLE001 - a compile error is a result
        return {"error": f"{type(e).__name__}: {e}"[:2000]}
    text = log.getvalue()
    out = {name: int(m.group(1)) if (m := rx.search(text)) else None for name, rx in _PTXAS.items()}
    out["spills"] = (out.pop("spill_stores") or 0) + (out.pop("spill_loads") or 0)
    out["smem"] = compiled.metadata.shared
    out["num_warps"] = compiled.metadata.num_warps
    if out["regs"] is None:
        out["error"] = "no ptxas report (the Triton cache answered: TRITON_CACHE_DIR must be empty)"
    return out


def _worker_init(cache_dir: str):
    os.environ.pop("TRITON_INTERPRET", None)
    os.environ["TRITON_CACHE_DIR"] = tempfile.mkdtemp(prefix="triton-", dir=cache_dir)


def compile_all(builds: list[Build], cache: Path | None, workers: int | None = None) -> tuple[int, int]:
    """Fill ``build.result`` for every build; returns (compiled now, taken from the cache)."""
    todo = []
    for b in builds:
        path = cache / f"{b.key}.json" if cache else None
        if path is not None and path.exists():
            b.result = json.loads(path.read_text())
        else:
            todo.append(b)
    if todo:
        scratch = Path(tempfile.mkdtemp(prefix="asymvq-kernel-builds-"))
        # spawn: a fresh interpreter per worker, with the kernels defined for the compiler
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(workers or os.cpu_count() or 2, mp_context=ctx,
                                 initializer=_worker_init, initargs=(str(scratch),)) as pool:
            for b, result in zip(todo, pool.map(_compile_one, todo, chunksize=1)):
                b.result = result
                if cache is not None and "error" not in result:
                    cache.mkdir(parents=True, exist_ok=True)
                    (cache / f"{b.key}.json").write_text(json.dumps(result))
    return len(todo), len(builds) - len(todo)


def problems(builds: list[Build]) -> list[str]:
    """What must not ship: compile errors, shared memory over the limit, offered configs that spill."""
    out = []
    for b in builds:
        r, where = b.result, f"{b.target} {b.name} {b.config} [{b.variant}]"
        if "error" in r:
            out.append(f"{where}: {r['error'].splitlines()[0]}")
            continue
        limit = _common.smem_limit(TARGETS[b.target])
        if r["smem"] > limit:
            out.append(f"{where}: {r['smem']} B of shared memory, over the target's {limit} B")
        if b.autotuned and r["spills"]:
            out.append(f"{where}: spills {r['spills']} B of registers (drop the config or justify it by a measurement)")
    return out


def table(builds: list[Build]) -> str:
    """Markdown: per kernel and config, over its variants and dtypes, the worst registers,
    spills and shared memory on each target."""
    rows: dict[tuple, dict] = {}
    for b in builds:
        if "error" in b.result:
            continue
        row = rows.setdefault((b.name, b.config), {})
        worst = row.setdefault(b.target, {"builds": 0, "regs": 0, "spills": 0, "smem": 0})
        worst["builds"] += 1
        for k in ("regs", "spills", "smem"):
            worst[k] = max(worst[k], b.result[k] or 0)
    targets = sorted({b.target for b in builds})
    head = "| kernel | config | " + " | ".join(f"{t} builds | {t} regs | {t} spills B | {t} smem B" for t in targets)
    lines = [head + " |", "|" + "---|" * (2 + 4 * len(targets))]
    for (name, config), row in sorted(rows.items()):
        cells = []
        for t in targets:
            w = row.get(t)
            cells += [str(w[k]) for k in ("builds", "regs", "spills", "smem")] if w else ["-"] * 4
        lines.append(f"| `{name}` | {config} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
