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
