"""Peak-memory measurement for one run.

- CUDA: ``torch.cuda.max_memory_allocated`` since the run began (tensors only, absolute).
- CPU: growth of the process's peak resident set size since the run began. On Linux the kernel's
  high-water mark is reset at the start (``/proc/self/clear_refs``) and glibc first hands its
  free heap back to the OS (``malloc_trim``), so runs sharing a process (a sequential grid,
  joblib's reused workers) are measured like fresh ones; elsewhere ``ru_maxrss`` is used (then
  only a process's first run is exact).
"""

from __future__ import annotations

import resource
import sys

import torch


def status_kb(field: str, pid: int | str = "self") -> int | None:
    """A memory field of ``/proc/<pid>/status`` in kB (``VmRSS``: resident now, ``VmHWM``: its
    peak): this process's by default, or another's by its id; None where it cannot be read (not
    Linux, the process gone, no such field)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def _trim_heap() -> None:
    """Return free heap memory to the OS, so that memory a run touches counts as growth."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _maxrss_kb() -> int:
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r // 1024 if sys.platform == "darwin" else r


class PeakMemory:
    """``start()`` then ``peak_mb()``; ``kind`` says what was measured."""

    def __init__(self, device: torch.device):
        self.device = torch.device(device)
        self.kind = "cuda_max_allocated" if self.device.type == "cuda" else "cpu_peak_rss_growth"
        self._base_kb = 0
        self._hwm = False
        self.started = False

    def start(self) -> None:
        self.started = True
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            return
        _trim_heap()
        self._hwm = _reset_hwm() and status_kb("VmHWM") is not None
        self._base_kb = status_kb("VmRSS") or 0 if self._hwm else _maxrss_kb()

    def peak_mb(self) -> float:
        """Peak since ``start()`` (0.0 if it was never started, e.g. a skipped run)."""
        if not self.started:
            return 0.0
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        peak = status_kb("VmHWM") if self._hwm else _maxrss_kb()
        return max(0, (peak or 0) - self._base_kb) / 1024
