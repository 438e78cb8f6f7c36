"""Process memory: peak and current resident set size, a probe around the training loop, CUDA peaks.

On Linux both figures come from /proc/self/status: VmHWM (the resident "high-water mark") and
VmRSS (resident now), in kB. Elsewhere the peak falls back to resource.getrusage (ru_maxrss:
kB on Linux, bytes on macOS) and the current RSS is unknown (None).

Peak memory is a property of a whole process: compare it between runs only when each run has its
own fresh process (as `ffint8 bench` does), never between runs in one process.
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from ffint8.heap import release_free_heap  # before the baseline and each restart (below)

MB = 2**20


def _status_kb(field: str, root: str | os.PathLike = "/") -> int | None:
    """One "Field:  N kB" line of root/proc/self/status, in kB; None when absent or unreadable."""
    try:
        text = (Path(root) / "proc/self/status").read_text(encoding="ascii", errors="replace")
    except OSError:
        return None
    m = re.search(rf"^{field}:\s+(\d+)\s*kB", text, re.MULTILINE)
    return int(m.group(1)) if m else None


def peak_rss_bytes(root: str | os.PathLike = "/") -> int | None:
    """The process's peak resident set size in bytes (VmHWM; ru_maxrss where /proc is missing)."""
    kb = _status_kb("VmHWM", root)
    if kb is not None:
        return kb * 1024
    try:
        import resource
    except ImportError:  # Windows
        return None
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(maxrss) if sys.platform == "darwin" else int(maxrss) * 1024


def current_rss_bytes(root: str | os.PathLike = "/") -> int | None:
    """The process's resident set size now, in bytes (VmRSS); None where /proc is missing."""
    kb = _status_kb("VmRSS", root)
    return None if kb is None else kb * 1024


def file_rss_bytes(root: str | os.PathLike = "/") -> int | None:
    """The file-backed part of the resident set now, in bytes (RssFile: mapped files, above all
    shared libraries' code); None where /proc is missing or the kernel predates the field."""
    kb = _status_kb("RssFile", root)
    return None if kb is None else kb * 1024


def reset_peak_rss(root: str | os.PathLike = "/") -> bool:
    """Set the process's VmHWM back to its current RSS (Linux >= 4.0: write "5" to
    /proc/self/clear_refs). True when that worked; afterwards VmHWM is the peak since the reset."""
    try:
        with open(Path(root) / "proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
        return True
    except OSError:
        return False


def cuda_in_use() -> bool:
    """True if this process has already initialised CUDA (checking does not initialise it)."""
    torch = sys.modules.get("torch")  # not imported: CUDA cannot be in use
    if torch is None:
        return False
    return bool(torch.cuda.is_available() and torch.cuda.is_initialized())


@dataclass(frozen=True)
class MemoryReport:
    """Memory of one training loop, in bytes (None: not available on this system).

    peak_rss: the process's peak RSS over its whole life (data loading included).
    baseline_rss: RSS just before the loop. loop_peak_rss: peak RSS during the loop.
    train_memory: loop_peak_rss - baseline_rss, what the loop itself added.
    peak_reset: True when the high-water mark was reset at the baseline, so loop_peak_rss is the
    peak of the loop alone; False when it is the process's peak, which may predate the loop
    (then train_memory can overstate).
    cuda_peak_allocated / cuda_peak_reserved: torch's CUDA allocator peaks during the loop.
    file_growth: RssFile at the end minus RssFile at the baseline: file-backed pages the loop
    touched first, mostly library code run for the first time (about 10 MB of PyTorch's for
    the MLP on x86, whichever the algorithm, session 14). Part of train_memory, but not memory
    the training holds: shared, and given back under pressure without a write.
    """

    peak_rss: int | None
    baseline_rss: int | None
    loop_peak_rss: int | None
    train_memory: int | None
    peak_reset: bool
    cuda_peak_allocated: int | None = None
    cuda_peak_reserved: int | None = None
    file_growth: int | None = None

    def to_dict(self) -> dict:
        """The figures in MB (2^20 bytes), rounded to 0.01; None stays None."""

        def mb(v: int | None) -> float | None:
            return None if v is None else round(v / MB, 2)

        return {"peak_rss_mb": mb(self.peak_rss), "baseline_rss_mb": mb(self.baseline_rss),
                "loop_peak_rss_mb": mb(self.loop_peak_rss),
                "train_memory_mb": mb(self.train_memory), "peak_reset": self.peak_reset,
                "cuda_peak_allocated_mb": mb(self.cuda_peak_allocated),
                "cuda_peak_reserved_mb": mb(self.cuda_peak_reserved),
                "file_growth_mb": mb(self.file_growth)}


class MemoryProbe:
    """begin() just before the training loop, end() after it -> MemoryReport.

    begin() records the process peak so far and the current RSS (the baseline), then resets the
    high-water mark where the kernel allows, so that the peak read at end() belongs to the loop.
    """

    def __init__(self, root: str | os.PathLike = "/") -> None:
        self.root = root
        self._peak_before: int | None = None
        self._baseline: int | None = None
        self._file_baseline: int | None = None
        self._reset = False
        self._cuda = False
        self._begun = False
        self._paused = False
        self._segment_peaks: list[int | None] = []  # loop peaks read at each pause()
        self._other_peaks: list[int | None] = []  # peaks of the excluded stretches

    def begin(self) -> None:
        self._peak_before = peak_rss_bytes(self.root)
        release_free_heap()  # heap freed by data loading would hide the loop's own growth
        self._baseline = current_rss_bytes(self.root)
        self._file_baseline = file_rss_bytes(self.root)
        self._reset = reset_peak_rss(self.root)
        self._segment_peaks, self._other_peaks = [], []
        self._paused = False
        self._cuda = cuda_in_use()
        if self._cuda:
            import torch

            torch.cuda.reset_peak_memory_stats()
        self._begun = True

    def pause(self) -> None:
        """Start a stretch that is not part of the loop's figure (evaluation between epochs):
        keep the peak so far. Only possible where the high-water mark can be reset."""
        if self._reset and not self._paused:
            self._segment_peaks.append(peak_rss_bytes(self.root))
            self._paused = True

    def resume(self) -> None:
        """End the excluded stretch: the heap it freed goes back to the system, then the
        high-water mark restarts from the RSS now (see docs/measurement.md)."""
        if self._reset and self._paused:
            self._other_peaks.append(peak_rss_bytes(self.root))
            release_free_heap()
            reset_peak_rss(self.root)
            self._paused = False

    def end(self) -> MemoryReport:
        if not self._begun:
            raise RuntimeError("MemoryProbe.end() called before begin()")
        if self._paused:  # ended inside an excluded stretch: its peak is not the loop's
            self._other_peaks.append(peak_rss_bytes(self.root))
        now = None if self._paused else peak_rss_bytes(self.root)
        seen = [v for v in (*self._segment_peaks, now) if v is not None]
        loop_peak = max(seen) if seen else None
        peaks = [v for v in (self._peak_before, loop_peak, *self._other_peaks) if v is not None]
        train = None
        if loop_peak is not None and self._baseline is not None:
            train = max(loop_peak - self._baseline, 0)
        file_now = file_rss_bytes(self.root)
        file_growth = (None if file_now is None or self._file_baseline is None
                       else file_now - self._file_baseline)
        allocated = reserved = None
        if self._cuda or cuda_in_use():
            import torch

            allocated = int(torch.cuda.max_memory_allocated())
            reserved = int(torch.cuda.max_memory_reserved())
        return MemoryReport(peak_rss=max(peaks) if peaks else None, baseline_rss=self._baseline,
                            loop_peak_rss=loop_peak, train_memory=train, peak_reset=self._reset,
                            cuda_peak_allocated=allocated, cuda_peak_reserved=reserved,
                            file_growth=file_growth)
