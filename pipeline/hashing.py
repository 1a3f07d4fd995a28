"""Content hashes: of JSON-able values, of files (large ones by name, size and mtime), of folders."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

# Files above this size are identified by name, size and mtime instead of read in full.
FULL_HASH_LIMIT = 256 * 1024 * 1024


def hash_json(obj: Any) -> str:
    text = json.dumps(obj, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def file_digest(path: Path) -> str:
    stat = path.stat()
    if stat.st_size > FULL_HASH_LIMIT:
        return hash_json([path.name, stat.st_size, int(stat.st_mtime)])
    return content_digest(path)


def content_digest(path: Path) -> str:
    """sha256 of every byte, whatever the size (data files: pipeline.data.check_cache keeps it per file version)."""
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
