"""The store: finished artifacts under `<store>/<kind>/<fingerprint>/`. A stage writes into a
temporary folder that is renamed into place only when complete, so a crash never leaves something
that looks finished. A lock per fingerprint keeps two jobs (of a sweep, or on two machines sharing
the store) from building the same artifact at once; the lock file names its holder (host, pid,
since when), and a waiting run says who it waits for. Temporary folders carry host and pid, so a
crashed writer's folder is recognised by the next run on the same host, never another host's: one
that holds trainer checkpoints is taken over by the next run of the same fingerprint, which resumes
from them (pipeline/training/checkpoints.py); the others are removed.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import socket
import time
from pathlib import Path
from typing import Iterator

from pipeline.artifact import MANIFEST, Artifact, write_json_atomic
from pipeline.errors import TunechainError
from pipeline.training.checkpoints import latest


class StoreLockTimeout(TunechainError):
    """Another run kept building the same stage for longer than store.lock_timeout_s."""


LOCK_POLL_S = 1.0


class Store:
    def __init__(self, root: str | Path, lock_timeout_s: float | None = None):
        self.lock_timeout_s = lock_timeout_s  # None: wait as long as the other run builds
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
    def lock(self, fingerprint: str, announce=print) -> Iterator[None]:
        self.lock_root.mkdir(parents=True, exist_ok=True)
        with open(self.lock_root / f"{fingerprint}.lock", "a+") as handle:  # a+: never truncate the holder's record
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.seek(0)
                holder = handle.read().strip() or "holder unknown"
                limit = f", for at most {self.lock_timeout_s:g} s" if self.lock_timeout_s is not None else ""
                announce(f"waiting for stage {fingerprint[:12]}: another run builds it ({holder}){limit}")
                self._wait(handle, fingerprint, holder)
            handle.seek(0)
            handle.truncate()
            handle.write(f"{socket.gethostname()} pid {os.getpid()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
            handle.flush()
            try:
                yield
            finally:
                handle.truncate(0)
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _wait(self, handle, fingerprint: str, holder: str) -> None:
        if self.lock_timeout_s is None:
            fcntl.flock(handle, fcntl.LOCK_EX)
            return
        deadline = time.monotonic() + self.lock_timeout_s
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise StoreLockTimeout(
                        f"store.lock_timeout_s: gave up after {self.lock_timeout_s:g} s waiting for stage "
                        f"{fingerprint[:12]}, which {holder} is still building (raise store.lock_timeout_s, "
                        f"or null to wait)") from None
                time.sleep(LOCK_POLL_S)

    def new_tmp_dir(self, fingerprint: str) -> Path:
        """A temporary folder for building `fingerprint`: a crashed run's folder of the same fingerprint that
        holds checkpoints, taken over (renamed to this writer), else a new one."""
        self.clean_stale_tmp()
        folder = self.tmp_root / f"{fingerprint}-{_host()}-{os.getpid()}-{int(time.time())}"
        unfinished = sorted((f for f in self._stale() if f.name.startswith(f"{fingerprint}-") and _has_checkpoints(f)),
                            key=lambda f: f.stat().st_mtime)
        if unfinished:
            os.rename(unfinished[-1], folder)
            return folder
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
        """Remove temporary folders whose writer process is gone (a crash or kill -9), except those with
        checkpoints a re-run can resume from (kept for RESUMABLE_DAYS)."""
        for folder in self._stale():
            if not _has_checkpoints(folder) or time.time() - folder.stat().st_mtime > RESUMABLE_DAYS * 86400:
                shutil.rmtree(folder, ignore_errors=True)

    def _stale(self) -> list[Path]:
        """This host's temporary folders whose writer process is gone."""
        if not self.tmp_root.is_dir():
            return []
        found = []
        for folder in self.tmp_root.iterdir():
            parts = folder.name.split("-")  # fingerprint-host-pid-time (host may hold dashes); older: fingerprint-pid-time
            try:
                pid = int(parts[-2])
            except (ValueError, IndexError):
                continue
            host = "-".join(parts[1:-2]) or _host()
            if host == _host() and pid != os.getpid() and not _alive(pid):
                found.append(folder)
        return found


RESUMABLE_DAYS = 7


def _has_checkpoints(folder: Path) -> bool:
    return latest(folder) is not None


def _host() -> str:
    return socket.gethostname().replace("/", "_")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
