"""Fingerprints: what makes two stage runs the same run.

A stage's fingerprint hashes its kind, its resolved config (minus keys that change nothing it
produces), its inputs' fingerprints, the hashes of the data files it reads and the project
version. Equal fingerprints mean the stored artifact can be reused.
"""
from __future__ import annotations

from typing import Any, Iterable

from pipeline import __version__
from pipeline.hashing import hash_json

# Keys that only change how a run is shown, not what it produces.
COSMETIC_KEYS = frozenset({"inputs", "logging_steps", "compare_with", "progress"})


def strip_cosmetic(config: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in config.items() if k not in COSMETIC_KEYS}


def stage_fingerprint(kind: str, config: dict[str, Any], input_fingerprints: Iterable[str],
                      data_fingerprints: Iterable[str], extra: dict[str, Any] | None = None) -> str:
    return hash_json({
        "kind": kind,
        "config": strip_cosmetic(config),
        "inputs": list(input_fingerprints),
        "data": sorted(data_fingerprints),
        "version": __version__,
        "extra": extra or {},
    })[:20]
