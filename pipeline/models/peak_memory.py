"""Memory measured: a stage's peak (CUDA allocator, or the process's VmHWM on Linux, reset at each
stage's start), an eval's peak growth, and handing freed memory back to the OS between stages."""
from __future__ import annotations


def vm_status(field: str) -> int | None:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _reset_peak_rss() -> bool:
    """Linux resets the process's peak resident set (VmHWM) on `5 > /proc/self/clear_refs`."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def release() -> None:
    """Hand freed memory back to the system between stages, so one stage's peak is not the next's floor."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:
        pass


class PeakMemory:
    """The peak memory of a span of work: on a GPU the CUDA allocator's peak, on CPU the process's
    peak RSS (exact: Linux's VmHWM after resetting it; elsewhere the lifetime peak, an upper bound).
    Child processes (converters, servers) are not counted."""

    def __init__(self, device: str):
        self.device = device
        self.exact = False
        self.start_rss = 0

    def __enter__(self) -> "PeakMemory":
        release()
        self.exact = _reset_peak_rss()
        self.start_rss = vm_status("VmRSS") or 0
        if self.device == "cuda":
            import torch

            torch.cuda.reset_peak_memory_stats()
        return self

    def __exit__(self, *exc) -> None:
        return None

    def peak_rss(self) -> int:
        peak = vm_status("VmHWM")
        if peak is None:
            import resource

            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        return peak

    def result(self) -> dict:
        found = {"peak_rss_mb": round(self.peak_rss() / 2**20, 1), "start_rss_mb": round(self.start_rss / 2**20, 1),
                 "peak_rss_exact": self.exact}
        if self.device == "cuda":
            import torch

            found["peak_cuda_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        return found


class MemoryWatch:
    """Memory an evaluated model takes: the CUDA allocator's peak, or on CPU the process's peak RSS during the
    eval (Linux VmHWM, reset by the runner at the stage's start) above its RSS before the model was loaded."""

    def __init__(self, device: str):
        self.device = device
        self.before = vm_status("VmRSS") or 0
        if device == "cuda":
            import torch

            torch.cuda.reset_peak_memory_stats()

    def result(self) -> dict:
        if self.device == "cuda":
            import torch

            return {"memory_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1), "memory_of": "cuda_max_allocated"}
        peak = PeakMemory(self.device).peak_rss()
        return {"memory_mb": round((peak - self.before) / 2**20, 1), "memory_of": "peak_rss_growth"}


def peak_metrics(found: dict, planned_mb: float | None, of: str = "") -> dict:
    """A stage's measured peak beside its plan, as artifact metrics (`of`: whose peak, e.g. " (rank 0)")."""
    on_gpu = "peak_cuda_mb" in found
    return {"peak_memory_mb": found["peak_cuda_mb"] if on_gpu else found["peak_rss_mb"],
            "peak_memory_of": ("cuda" if on_gpu else "process_rss") + of, "peak_rss_mb": found["peak_rss_mb"],
            "start_rss_mb": found["start_rss_mb"], "planned_memory_mb": planned_mb}
