"""Memory planning: will a stage fit, and what to change if it does not.

Estimates follow seed 001's rules of thumb (bytes per parameter by dtype; memory as a multiple
of the weights' size per kind of work). They are coarse on purpose: the plan shows them next to
what the machine has, and warns with the usual remedies before anything is loaded.
"""
from __future__ import annotations

import json
import struct
from pathlib import Path

BYTES_PER_PARAM = {"float32": 4, "bfloat16": 2, "float16": 2, "int8": 1, "nf4": 0.5}

# Peak memory as a multiple of the weights' size (upper end of seed 001's ranges, where
# they are not pinned by a formula below).
WORK_MULTIPLE = {
    "inference": 1.2,   # weights + KV cache for short generations
    "lora_train": 1.5,  # frozen weights + adapter, its optimizer state and activations
}
# Full fine-tuning with AdamW: weights, gradients, two moments (+ fp32 master copy in mixed precision).
FULL_TRAIN_BYTES_PER_PARAM = {"float32": 16, "bfloat16": 16, "float16": 16}

REMEDIES = ("batch size 1 with gradient accumulation, gradient checkpointing (~30% slower), "
            "bf16, a shorter max_length, LoRA/QLoRA instead of full tuning, or hardware=deepspeed_zero3")


def count_parameters(folder: Path) -> int | None:
    """Sum tensor sizes from safetensors headers, without loading weights or torch."""
    total = 0
    files = sorted(Path(folder).glob("*.safetensors"))
    for path in files:
        with open(path, "rb") as handle:
            (length,) = struct.unpack("<Q", handle.read(8))
            header = json.loads(handle.read(length))
        for name, entry in header.items():
            if name != "__metadata__":
                count = 1
                for dim in entry["shape"]:
                    count *= dim
                total += count
    return total or None


def estimate_bytes(profile: str, n_params: int, dtype: str) -> int:
    weights = n_params * BYTES_PER_PARAM.get(dtype, 4)
    if profile == "qlora_train":  # NF4 weights (x1.15 for scales, seed 001's k) + adapter work
        return int(n_params * BYTES_PER_PARAM["nf4"] * 1.15 * WORK_MULTIPLE["lora_train"])
    if profile == "full_train":
        return int(n_params * FULL_TRAIN_BYTES_PER_PARAM.get(dtype, 16) * 1.2)
    return int(weights * WORK_MULTIPLE.get(profile, 1.2))


def available_bytes(device: str) -> int:
    if device == "cuda":
        import torch

        return torch.cuda.get_device_properties(0).total_memory
    import psutil

    return psutil.virtual_memory().available


def human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


# ---------------------------------------------------------------------------------------------
# Measuring: the peak of one stage, to put beside its estimate.

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
