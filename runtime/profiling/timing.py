"""Stage timing and peak memory, the way the TensorRT demo measures: events per span, one sync per measurement.

Below the pipeline (which records into whatever timer its caller passes, ``NULL_TIMER`` by default), so
the pipeline, the servers and the profiler share these primitives.

On a GPU each span records a pair of CUDA events on the current stream and nothing waits
until ``collect()``, which synchronizes once for the whole measurement (a full diffusion
run, or one decode); on the CPU each span reads ``perf_counter``. Optional NVTX ranges
mark the spans for Nsight Systems.
"""
from __future__ import annotations

import contextlib
import resource
import sys
import time
from pathlib import Path

import torch


class NullTimer:
    """The timer of a call nobody profiles (the pipeline's default): spans cost nothing."""

    def span(self, name: str):
        return contextlib.nullcontext()

    def note(self, key: str, value) -> None:
        """What a stage chose (the region a decode took): dropped, nobody reads it."""


NULL_TIMER = NullTimer()


class StageTimer:
    """Named spans -> milliseconds. ``rename`` maps a span name to the bucket it lands in."""

    def __init__(self, device: torch.device, *, nvtx: bool = False, rename: dict[str, str] | None = None):
        self.cuda = torch.device(device).type == "cuda"
        self.nvtx = nvtx and self.cuda
        self.rename: dict[str, str] = dict(rename or {})
        self._pending: list[tuple[str, object, object]] = []
        self.notes: dict[str, object] = {}  # what the stages chose (``note``), for the profile and response headers

    def note(self, key: str, value) -> None:
        """Record a stage's choice (``decode_region``: the box a region decode took, or why it decoded all)."""
        self.notes[key] = value

    @property
    def method(self) -> str:
        return "cuda-events" if self.cuda else "perf_counter"

    @contextlib.contextmanager
    def span(self, name: str):
        name = self.rename.get(name, name)
        if self.nvtx:
            torch.cuda.nvtx.range_push(name)
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            try:
                yield
            finally:
                end.record()
                self._pending.append((name, start, end))
        else:
            t0 = time.perf_counter()
            try:
                yield
            finally:
                self._pending.append((name, t0, time.perf_counter()))
        if self.nvtx:
            torch.cuda.nvtx.range_pop()

    def collect(self) -> list[tuple[str, float]]:
        """(name, ms) of every span since the last collect, in order; synchronizes once on a GPU."""
        if self.cuda and self._pending:
            torch.cuda.synchronize()
        if self.cuda:
            out = [(n, float(s.elapsed_time(e))) for n, s, e in self._pending]
        else:
            out = [(n, (e - s) * 1e3) for n, s, e in self._pending]
        self._pending = []
        return out


class PeakMemory:
    """Peak memory of one measurement: CUDA max allocated, or the process's peak RSS on the CPU.

    On Linux the RSS high-water mark is reset per measurement (/proc/self/clear_refs); where
    that is not possible the figure is the process's lifetime peak, and ``resettable`` says so.
    """

    def __init__(self, device: torch.device):
        self.cuda = torch.device(device).type == "cuda"
        self.device = device
        self.resettable = self.cuda or self._can_reset_rss()

    @property
    def kind(self) -> str:
        if self.cuda:
            return "cuda_max_allocated"
        return "cpu_peak_rss" if self.resettable else "cpu_process_peak_rss"

    @staticmethod
    def _can_reset_rss() -> bool:
        try:
            Path("/proc/self/clear_refs").write_text("5")
            return "VmHWM" in Path("/proc/self/status").read_text()
        except OSError:
            return False

    def reset(self) -> None:
        """Start a measurement: forget the old peak and remember what is already held."""
        if self.cuda:
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._baseline = int(torch.cuda.memory_allocated(self.device))
        else:
            if self.resettable:
                Path("/proc/self/clear_refs").write_text("5")
            self._baseline = self._status_bytes("VmRSS:")

    @staticmethod
    def _status_bytes(key: str) -> int | None:
        try:
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith(key):
                    return int(line.split()[1]) * 1024
        except OSError:
            pass
        return None

    def measure(self) -> dict:
        """Peak bytes since ``reset`` and the rise over what was held at ``reset`` (the stage's own working set)."""
        peak = self.peak_bytes()
        base = getattr(self, "_baseline", None)
        return {"peak_bytes": peak, "added_bytes": None if base is None else max(peak - base, 0)}

    def peak_bytes(self) -> int:
        if self.cuda:
            torch.cuda.synchronize(self.device)
            return int(torch.cuda.max_memory_allocated(self.device))
        if self.resettable:
            return self._status_bytes("VmHWM:")
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return int(peak if sys.platform == "darwin" else peak * 1024)


def percentile(samples: list[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default), without numpy."""
    s = sorted(samples)
    if not s:
        return float("nan")
    pos = (len(s) - 1) * q / 100.0
    lo, hi = int(pos), min(int(pos) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def summarize(samples: list[float]) -> dict:
    return {
        "count": len(samples),
        "min_ms": min(samples) if samples else float("nan"),
        "median_ms": percentile(samples, 50),
        "p90_ms": percentile(samples, 90),
        "mean_ms": sum(samples) / len(samples) if samples else float("nan"),
    }
