"""The store: finished artifacts under `<store>/<kind>/<fingerprint>/`. A stage writes into a
temporary folder that is renamed into place only when complete, so a crash never leaves something
that looks finished. A lock per fingerprint keeps two multirun jobs from building the same
artifact at once.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import time
from pathlib import Path
from typing import Iterator

from pipeline.artifact import MANIFEST, Artifact, write_json_atomic


class Store:
    def __init__(self, root: str | Path):
        self.root = Path(root).expanduser().resolve()
        self.tmp_root = self.root / ".tmp"
        self.lock_root = self.root / ".locks"

    def final_dir(self, kind: str, fingerprint: str) -> Path:
        return self.root / kind / fingerprint

    def find(self, kind: str, fingerprint: str) -> Artifact | None:
        folder = self.final_dir(kind, fingerprint)
        if (folder / MANIFEST).is_file():
            artifact = Artifact.read(folder)
            artifact.path = str(folder)  # the store may have moved since it was written
            return artifact
        return None

    @contextlib.contextmanager
    def lock(self, fingerprint: str) -> Iterator[None]:
        self.lock_root.mkdir(parents=True, exist_ok=True)
        with open(self.lock_root / f"{fingerprint}.lock", "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def new_tmp_dir(self, fingerprint: str) -> Path:
        self.clean_stale_tmp()
        folder = self.tmp_root / f"{fingerprint}-{os.getpid()}-{int(time.time())}"
        folder.mkdir(parents=True)
        return folder

    def commit(self, tmp_dir: Path, artifact: Artifact) -> Artifact:
        """Write the manifest, then move the folder into place in one rename."""
        final = self.final_dir(artifact.kind, artifact.fingerprint)
        if artifact.base_model == str(tmp_dir):  # a new base (a pruned model): it derives from itself
            artifact.base_model = str(final)
        artifact.path = str(final)
        write_json_atomic(tmp_dir / MANIFEST, artifact.to_json())
        final.parent.mkdir(parents=True, exist_ok=True)
        if final.exists():  # an unfinished leftover (no manifest) or a twin: the manifest wins
            if (final / MANIFEST).is_file():
                shutil.rmtree(tmp_dir, ignore_errors=True)
                return self.find(artifact.kind, artifact.fingerprint)  # type: ignore[return-value]
            shutil.rmtree(final)
        os.rename(tmp_dir, final)
        return artifact

    def clean_stale_tmp(self) -> None:
        """Remove temporary folders whose writer process is gone (a crash or kill -9)."""
        if not self.tmp_root.is_dir():
            return
        for folder in self.tmp_root.iterdir():
            try:
                pid = int(folder.name.split("-")[-2])
            except (ValueError, IndexError):
                continue
            if pid != os.getpid() and not _alive(pid):
                shutil.rmtree(folder, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
