"""Fingerprints: what makes two stage runs the same run.

A stage's fingerprint hashes its kind, its resolved config (minus keys that change nothing it
produces), its inputs' fingerprints, the hashes of the data files it reads and the project
version. Equal fingerprints mean the stored artifact can be reused.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Iterable

from pipeline import __version__

# Keys that only change how a run is shown, not what it produces.
COSMETIC_KEYS = frozenset({"inputs", "logging_steps", "compare_with", "progress"})
# Files above this size are identified by name, size and mtime instead of read in full.
FULL_HASH_LIMIT = 256 * 1024 * 1024


def hash_json(obj: Any) -> str:
    text = json.dumps(obj, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def file_digest(path: Path) -> str:
    stat = path.stat()
    if stat.st_size > FULL_HASH_LIMIT:
        return hash_json([path.name, stat.st_size, int(stat.st_mtime)])
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def folder_digest(folder: Path) -> str:
    entries = []
    for root, _, files in sorted(os.walk(folder)):
        for name in sorted(files):
            path = Path(root) / name
            entries.append([str(path.relative_to(folder)), file_digest(path)])
    return hash_json(entries)


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
