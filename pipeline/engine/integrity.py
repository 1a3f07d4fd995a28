"""What keeps a stored artifact honest after it is committed: every file and folder is fsynced before the
rename into place (and the parents after), so a power cut cannot leave a manifest beside half-written
weights; the manifest records each file's size and sha256, which a reuse checks cheaply (sizes) and
`tunechain verify` fully (digests)."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

from pipeline.artifact import MANIFEST
from pipeline.errors import TunechainError

DIGEST = "sha256"  # hashlib.file_digest: ~1-2 GB/s with the CPU's SHA extensions, read once at commit


class DamagedArtifact(TunechainError):
    """A stored artifact whose files no longer match its manifest."""


def record(folder: Path) -> dict[str, dict]:
    """Each file's size and digest, by its path under `folder` (the manifest itself excluded)."""
    files = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST):
        with open(path, "rb") as handle:
            digest = hashlib.file_digest(handle, DIGEST).hexdigest()
        files[path.relative_to(folder).as_posix()] = {"size": path.stat().st_size, DIGEST: digest}
    return files


def problems(folder: Path, files: dict[str, dict], full: bool) -> list[str]:
    """What differs from the manifest's record: missing files and sizes always, digests where `full`."""
    found = []
    for name, want in files.items():
        path = folder / name
        if not path.is_file():
            found.append(f"{name}: missing")
            continue
        size = path.stat().st_size
        if size != want["size"]:
            found.append(f"{name}: {size} bytes, the manifest says {want['size']}")
        elif full:
            with open(path, "rb") as handle:
                if hashlib.file_digest(handle, DIGEST).hexdigest() != want[DIGEST]:
                    found.append(f"{name}: its {DIGEST} differs from the manifest's (same size, altered content)")
    return found


def damaged_message(kind: str, fingerprint: str, folder: Path, found: list[str]) -> str:
    """What a reuse or `tunechain verify` says of a damaged artifact, and how to rebuild it."""
    return (f"stored {kind} {fingerprint} is damaged ({folder}): {'; '.join(found)}. Delete the folder "
            f"(rm -r {folder}) and run again to rebuild it; `tunechain verify` checks the whole store")


def fsync_tree(folder: Path) -> None:
    """Every file, then every folder (deepest first), on disk."""
    for path in sorted(folder.rglob("*"), key=lambda p: len(p.parts), reverse=True):
        if path.is_file() and not path.is_symlink():
            _fsync(path, os.O_RDONLY)
        elif path.is_dir():
            _fsync(path, os.O_RDONLY | os.O_DIRECTORY)
    _fsync(folder, os.O_RDONLY | os.O_DIRECTORY)


def fsync_dir(folder: Path) -> None:
    """A folder's entries (after a rename into or out of it) on disk."""
    _fsync(folder, os.O_RDONLY | os.O_DIRECTORY)


def _fsync(path: Path, flags: int) -> None:
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
