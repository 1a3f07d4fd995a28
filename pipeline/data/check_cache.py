"""What a plan learned about a data file, kept in the store so the next plan need not read it again.

A file's content hash is kept under its path with the size, mtime and inode it had when hashed: a
changed file (any of the three) is hashed again, an unchanged 10 GB file costs one stat. A check's
result (record count, format, or the error it raised) is kept under that hash with everything else
the check depends on (purpose, format, columns, limit, the validation code itself), so editing a
record, renaming a column or changing a validator re-checks, and nothing else does. The images a file's
records point at are kept with the result, each with its size and mtime: one that changes, appears or
goes re-checks the file (a stat per image).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Optional

from pipeline.artifact import write_json_atomic
from pipeline.hashing import content_digest, hash_json

# The code whose rules a cached check stands for: an edit to any of these re-checks every file.
_VALIDATION_CODE = ("formats.py", "parts.py", "images.py", "screens.py", "arrow.py", "readers.py", "records.py",
                    "datasets.py", "problems.py")


def validation_digest() -> str:
    here = Path(__file__).parent
    return hash_json([hashlib.sha256((here / name).read_bytes()).hexdigest() for name in _VALIDATION_CODE])


class CheckCache:
    """Files under `root` (the store's `.data/`): hashes/<path digest>.json and checks/<key>.json."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def digest(self, path: Path) -> str:
        path = Path(path).resolve()
        stat = path.stat()
        version = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "inode": stat.st_ino}
        record = self.root / "hashes" / f"{hash_json(str(path))[:32]}.json"
        known = _read(record)
        if known and known.get("path") == str(path) and known.get("version") == version:
            return known["sha256"]
        sha256 = content_digest(path)
        record.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(record, {"path": str(path), "version": version, "sha256": sha256})
        return sha256

    def check_key(self, digest: str, **depends: Any) -> str:
        return hash_json({"file": digest, "code": validation_digest(), **depends})

    def result(self, key: str) -> Optional[dict]:
        return _read(self.root / "checks" / f"{key}.json")

    def keep(self, key: str, result: dict) -> None:
        (self.root / "checks").mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.root / "checks" / f"{key}.json", result)


def _read(path: Path) -> Optional[dict]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None
