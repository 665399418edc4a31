"""The CPU's model and the instruction-set features that decide the default CPU precision.

bf16 is the default on the CPU only where the CPU computes it natively: ``avx512_bf16``
(Zen 4, Cooper Lake and later Xeons) or AMX (``amx_bf16``: Sapphire Rapids and later). Elsewhere
(Zen 3 and other AVX2-only CPUs, AVX-512 without bf16) oneDNN and OpenVINO emulate bf16 through
fp32 conversions, slower than fp32 itself, so the default there is fp32. The torch path and the
OpenVINO engine both read it from here (``default_cpu_dtype``); a profile or a benchmark prints
``describe()`` so every number says which CPU made it and what decided its precision.

Flags come from ``/proc/cpuinfo`` (Linux; the kernel's names); torch's own view of the vector
width (``torch.backends.cpu.get_cpu_capability()``: DEFAULT, AVX2, AVX512, ...) is recorded next to
them. Where /proc/cpuinfo cannot be read (another OS) no flag is known and the default is fp32.

``ONEDNN_MAX_CPU_ISA`` (oneDNN's own cap, honoured by torch's and OpenVINO's convolutions alike:
``brgconv_avx2_f32`` instead of ``brgconv_avx512_f32`` in OpenVINO's runtime model) removes the
features above the cap: a CPU capped at ``AVX2`` computes as an AVX2-only CPU and gets fp32. The
benchmarks use it (with ``ATEN_CPU_CAPABILITY=avx2`` for torch's own kernels) to run an AVX-512/AMX
machine with the kernels an AVX2-only CPU runs; ONNX Runtime's MLAS kernels do not read it. OpenVINO's CPU
plugin is not a fit for it: its own kernels still read the CPU's features, so under a cap some nodes find no
implementation (OpenVINO 2026.4.1 on an AMX Xeon at AVX2: a bf16 Softmax, "Supported primitive descriptors list is
empty") or crash (a segmentation fault in the tiny SDXL UNet's fp32 inference); the decoder's fp32 IR runs.
``make test-avx2`` runs the suite under the cap without OpenVINO's tests (the OpenVINO engine warns under a cap).
"""
from __future__ import annotations

import functools
import os
import platform
from dataclasses import dataclass

import torch

CPUINFO = "/proc/cpuinfo"
# The features printed, in this order; "vnni" is avx512_vnni or avx_vnni (int8 dot products).
FEATURES = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "vnni")
_VNNI = ("avx512_vnni", "avx_vnni")
BF16_NATIVE = ("avx512_bf16", "amx_bf16")  # either: the CPU computes bf16 natively
ISA_CAP_ENV = ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA")
# oneDNN's cap names (any case) -> the flag families (prefixes) above them
_AVX512 = ("avx512", "amx")
_ISA_CAPS = {"sse41": ("avx", "fma", "f16c") + _AVX512, "avx": ("avx2", "fma", "avx_vnni") + _AVX512,
             "avx2": ("avx_vnni",) + _AVX512, "avx2_vnni": _AVX512, "avx2_vnni_2": _AVX512,
             "avx512_core": ("amx", "avx512_bf16", "avx512_fp16", "avx512_vnni", "avx_vnni"),
             "avx512_core_vnni": ("amx", "avx512_bf16", "avx512_fp16"), "avx512_core_bf16": ("amx", "avx512_fp16"),
             "avx512_core_fp16": ("amx",), "avx10_1_512": ("amx",), "avx512_core_amx": (), "avx10_1_512_amx": (),
             "avx512_core_amx_fp16": (), "avx10_1_512_amx_fp16": (), "avx10_2_512": ("amx",), "avx10_2_512_amx_2": (),
             "all": (), "default": ()}


@dataclass(frozen=True)
class CpuFeatures:
    """A CPU's ``model`` name, its feature ``flags`` (the kernel's names) and torch's ``capability``."""

    model: str
    flags: frozenset[str]
    capability: str | None = None
    isa_cap: str | None = None  # ONEDNN_MAX_CPU_ISA as set (flags above it already removed)

    def has(self, feature: str) -> bool:
        """Whether the CPU has ``feature`` (one of FEATURES, or any kernel flag name)."""
        if feature == "vnni":
            return any(f in self.flags for f in _VNNI)
        return feature in self.flags

    @property
    def native_bf16(self) -> bool:
        return any(self.has(f) for f in BF16_NATIVE)

    def features(self) -> dict[str, bool]:
        return {f: self.has(f) for f in FEATURES}

    def to_dict(self) -> dict:
        """For a result JSON: model, each of FEATURES, torch's capability and the default CPU dtype."""
        return {"model": self.model, **self.features(), "torch_capability": self.capability, "onednn_isa_cap": self.isa_cap,
                "default_dtype": "bf16" if self.native_bf16 else "fp32"}

    def describe(self) -> str:
        """One line: ``AMD EPYC 9B14: avx2 avx512f avx512_bf16 vnni, no amx_bf16 (torch AVX512) -> bf16``."""
        have = [f for f in FEATURES if self.has(f)]
        lack = [f for f in FEATURES if not self.has(f)]
        parts = " ".join(have) or "none of " + " ".join(FEATURES)
        if have and lack:
            parts += ", no " + " ".join(lack)
        notes = ([f"oneDNN capped at {self.isa_cap}"] if self.isa_cap else []) + \
            ([f"torch {self.capability}"] if self.capability else [])
        torch_part = f" ({'; '.join(notes)})" if notes else ""
        return f"{self.model}: {parts}{torch_part} -> {'bf16' if self.native_bf16 else 'fp32'}"


def parse_cpuinfo(text: str) -> tuple[str | None, frozenset[str]]:
    """(model name, flags) of the first processor in ``/proc/cpuinfo`` text (x86 ``model name``/``flags``,
    Arm ``Features``); None and no flags for what it does not name."""
    model, flags = None, None
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if not sep:
            continue
        key = key.strip().lower()
        if key == "model name" and model is None:
            model = value.strip() or None
        elif key in ("flags", "features") and flags is None:
            flags = frozenset(value.split())
        if model is not None and flags is not None:
            break
    return model, flags or frozenset()


def _torch_capability() -> str | None:
    try:
        return torch.backends.cpu.get_cpu_capability()
    except (AttributeError, RuntimeError):  # older torch
        return None


def cap_flags(flags: frozenset[str], cap: str | None) -> frozenset[str]:
    """``flags`` without the features oneDNN's ISA ``cap`` (``ONEDNN_MAX_CPU_ISA``'s value) forbids."""
    if not cap:
        return flags
    removed = _ISA_CAPS.get(cap.strip().lower())
    if removed is not None:
        return frozenset(f for f in flags if not f.startswith(removed))
    raise ValueError(f"ONEDNN_MAX_CPU_ISA: expected one of oneDNN's ISA names (e.g. AVX2, AVX512_CORE, ALL), got {cap!r}")


def env_isa_cap(environ=None) -> str | None:
    """The oneDNN ISA cap set in the environment (``ONEDNN_MAX_CPU_ISA``, or its old name), if any."""
    env = os.environ if environ is None else environ
    return next((env[k] for k in ISA_CAP_ENV if env.get(k)), None)


def read_cpu_features(cpuinfo: str | None = None, capability: str | None = None,
                      isa_cap: str | None = None) -> CpuFeatures:
    """The features of ``cpuinfo`` text (None: this machine's /proc/cpuinfo, torch's ``capability`` and the
    environment's oneDNN ISA cap) and torch ``capability``, less what ``isa_cap`` forbids."""
    if cpuinfo is None:
        try:
            with open(CPUINFO, encoding="utf-8", errors="replace") as f:
                cpuinfo = f.read()
        except OSError:
            cpuinfo = ""
        capability = capability or _torch_capability()
        isa_cap = isa_cap or env_isa_cap()
    model, flags = parse_cpuinfo(cpuinfo)
    return CpuFeatures(model or platform.processor() or platform.machine() or "unknown CPU", cap_flags(flags, isa_cap),
                       capability, isa_cap or None)


@functools.lru_cache(maxsize=1)
def cpu_features() -> CpuFeatures:
    """This machine's CPU (read once per process)."""
    return read_cpu_features()


def default_cpu_dtype(features: CpuFeatures | None = None) -> torch.dtype:
    """bf16 where the CPU computes it natively (avx512_bf16 or amx_bf16), fp32 elsewhere; ``features``
    default to this machine's."""
    return torch.bfloat16 if (features or cpu_features()).native_bf16 else torch.float32
