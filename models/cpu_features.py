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
"""
from __future__ import annotations

import functools
import platform
from dataclasses import dataclass

import torch

CPUINFO = "/proc/cpuinfo"
# The features printed, in this order; "vnni" is avx512_vnni or avx_vnni (int8 dot products).
FEATURES = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "vnni")
_VNNI = ("avx512_vnni", "avx_vnni")
BF16_NATIVE = ("avx512_bf16", "amx_bf16")  # either: the CPU computes bf16 natively


@dataclass(frozen=True)
class CpuFeatures:
    """A CPU's ``model`` name, its feature ``flags`` (the kernel's names) and torch's ``capability``."""

    model: str
    flags: frozenset[str]
    capability: str | None = None

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
        return {"model": self.model, **self.features(), "torch_capability": self.capability,
                "default_dtype": "bf16" if self.native_bf16 else "fp32"}

    def describe(self) -> str:
        """One line: ``AMD EPYC 9B14: avx2 avx512f avx512_bf16 vnni, no amx_bf16 (torch AVX512) -> bf16``."""
        have = [f for f in FEATURES if self.has(f)]
        lack = [f for f in FEATURES if not self.has(f)]
        parts = " ".join(have) or "none of " + " ".join(FEATURES)
        if have and lack:
            parts += ", no " + " ".join(lack)
        torch_part = f" (torch {self.capability})" if self.capability else ""
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


def read_cpu_features(cpuinfo: str | None = None, capability: str | None = None) -> CpuFeatures:
    """The features of ``cpuinfo`` text (None: this machine's /proc/cpuinfo) and torch ``capability``
    (None: this torch's)."""
    if cpuinfo is None:
        try:
            with open(CPUINFO, encoding="utf-8", errors="replace") as f:
                cpuinfo = f.read()
        except OSError:
            cpuinfo = ""
        capability = capability or _torch_capability()
    model, flags = parse_cpuinfo(cpuinfo)
    return CpuFeatures(model or platform.processor() or platform.machine() or "unknown CPU", flags, capability)


@functools.lru_cache(maxsize=1)
def cpu_features() -> CpuFeatures:
    """This machine's CPU (read once per process)."""
    return read_cpu_features()


def default_cpu_dtype(features: CpuFeatures | None = None) -> torch.dtype:
    """bf16 where the CPU computes it natively (avx512_bf16 or amx_bf16), fp32 elsewhere; ``features``
    default to this machine's."""
    return torch.bfloat16 if (features or cpu_features()).native_bf16 else torch.float32
