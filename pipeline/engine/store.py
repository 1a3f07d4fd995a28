"""The store: finished artifacts under `<store>/<kind>/<fingerprint>/`. A stage writes into a
temporary folder that is renamed into place only when complete, so a crash never leaves something
that looks finished. A lock per fingerprint (flock on `.locks/<fingerprint>.lock`) keeps two jobs (of a
sweep, or on two machines sharing the store) from building the same artifact at once; the writer holds
it for the whole build, and the lock file names its holder (host, pid, since when) for messages.
A temporary folder whose fingerprint lock is free has no writer (a crash or kill -9), whichever host or
container made it; one whose lock is held is left alone. Host names and pids cannot decide this: two
containers may share a host name and pid numbers. A free folder that holds trainer checkpoints is taken
over by the next run of the same fingerprint, which resumes from them (pipeline/training/checkpoints.py);
the others are removed. A commit fsyncs the folder and records each file's size and digest in the
manifest; a lookup checks the sizes (pipeline/engine/integrity.py), `tunechain verify` the digests.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import socket
import time
from pathlib import Path
from typing import Iterator

from pipeline.artifact import MANIFEST, Artifact, write_json_atomic
from pipeline.engine import integrity
from pipeline.errors import ConfigError, TunechainError
from pipeline.training.checkpoints import latest


class StoreLockTimeout(TunechainError):
    """Another run kept building the same stage for longer than store.lock_timeout_s."""


LOCK_POLL_S = 1.0


class Store:
    @classmethod
    def configured(cls, cfg) -> "Store":
        """The run's store: the folder `paths.store`, the settings under `store`."""
        settings = cfg.get("store")
        if settings is not None and not hasattr(settings, "get"):
            raise ConfigError(f"store={settings!r}: `store` holds the store's settings (store.lock_timeout_s); "
                              f"its folder is paths.store={settings} (or the TUNECHAIN_STORE variable)")
        return cls(cfg.paths.store, lock_timeout_s=(settings or {}).get("lock_timeout_s"))

    def __init__(self, root: str | Path, lock_timeout_s: float | None = None):
        self.lock_timeout_s = lock_timeout_s  # None: wait as long as the other run builds
        self.root = Path(root).expanduser().resolve()
        self.tmp_root = self.root / ".tmp"
        self.lock_root = self.root / ".locks"
        self._held: set[str] = set()  # fingerprints whose lock this process holds through this store

    def final_dir(self, kind: str, fingerprint: str) -> Path:
        return self.root / kind / fingerprint

    def find(self, kind: str, fingerprint: str, full: bool = False) -> Artifact | None:
        """The stored artifact, None if there is none; one whose files do not match its manifest (sizes, and
        digests where `full`) is refused with what differs and how to rebuild it."""
        folder = self.final_dir(kind, fingerprint)
        if not (folder / MANIFEST).is_file():
            return None
        try:
            artifact = Artifact.read(folder)
        except (ValueError, TypeError) as e:  # a torn or edited manifest
            raise integrity.DamagedArtifact(integrity.damaged_message(
                kind, fingerprint, folder, [f"{MANIFEST} does not parse ({e})"])) from None
        found = integrity.problems(folder, artifact.files, full)
        if found:
            raise integrity.DamagedArtifact(integrity.damaged_message(kind, fingerprint, folder, found))
        artifact.path = str(folder)  # the store may have moved since it was written
        return artifact

    def artifacts(self) -> Iterator[tuple[str, str]]:
        """(kind, fingerprint) of every finished artifact in the store."""
        for manifest in sorted(self.root.glob(f"*/*/{MANIFEST}")):
            if not manifest.parent.parent.name.startswith("."):
                yield manifest.parent.parent.name, manifest.parent.name

    @contextlib.contextmanager
    def lock(self, fingerprint: str, announce=print) -> Iterator[None]:
        self.lock_root.mkdir(parents=True, exist_ok=True)
        with open(self._lock_path(fingerprint), "a+") as handle:  # a+: never truncate the holder's record
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
            self._held.add(fingerprint)
            try:
                yield
            finally:
                self._held.discard(fingerprint)
                handle.truncate(0)
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _lock_path(self, fingerprint: str) -> Path:
        return self.lock_root / f"{fingerprint}.lock"

    @contextlib.contextmanager
    def _unwritten(self, fingerprint: str) -> Iterator[bool]:
        """True while no writer builds `fingerprint`: this store holds its lock, or it was free and is held
        here until the block ends (so a writer starting meanwhile waits rather than sees its folder go)."""
        if fingerprint in self._held:
            yield True
            return
        self.lock_root.mkdir(parents=True, exist_ok=True)
        with open(self._lock_path(fingerprint), "a+") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            try:
                yield True
            finally:
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
        """A temporary folder for building `fingerprint` (the caller holds its lock): a crashed run's folder of
        the same fingerprint that holds checkpoints, taken over (renamed to this writer), else a new one."""
        self.clean_stale_tmp()
        folder = self.tmp_root / f"{fingerprint}-{_host()}-{os.getpid()}-{int(time.time())}"
        with self._unwritten(fingerprint) as free:
            leftovers = self.tmp_folders(fingerprint) if free else []
            unfinished = sorted((f for f in leftovers if _has_checkpoints(f)), key=lambda f: f.stat().st_mtime)
            if unfinished:
                os.rename(unfinished[-1], folder)
                return folder
        folder.mkdir(parents=True)
        return folder

    def commit(self, tmp_dir: Path, artifact: Artifact) -> Artifact:
        """Write the manifest, then move the folder into place in one rename. A rename that finds the final
        folder there already (a twin written meanwhile, by a run on another machine of a shared store) keeps
        that one; a leftover without a manifest (a crash mid-copy, by older versions) is replaced."""
        final = self.final_dir(artifact.kind, artifact.fingerprint)
        if artifact.base_model == str(tmp_dir):  # a new base (a pruned model): it derives from itself
            artifact.base_model = str(final)
        artifact.path = str(final)
        artifact.files = integrity.record(tmp_dir)
        write_json_atomic(tmp_dir / MANIFEST, artifact.to_json())
        integrity.fsync_tree(tmp_dir)  # on disk before the rename makes it look finished
        final.parent.mkdir(parents=True, exist_ok=True)
        for attempt in range(2):
            try:
                os.rename(tmp_dir, final)
                integrity.fsync_dir(final.parent)
                integrity.fsync_dir(tmp_dir.parent)
                return artifact
            except OSError as e:
                if e.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                    raise
            if (final / MANIFEST).is_file():  # the manifest wins: theirs is complete, ours is a duplicate
                shutil.rmtree(tmp_dir, ignore_errors=True)
                return self.find(artifact.kind, artifact.fingerprint)  # type: ignore[return-value]
            if attempt == 0:
                shutil.rmtree(final, ignore_errors=True)
        raise OSError(f"could not move {tmp_dir} to {final}: something keeps writing there without a manifest")

    def clean_stale_tmp(self) -> None:
        """Remove temporary folders that no writer holds (a crash or kill -9), except those with checkpoints
        a re-run can resume from (kept for RESUMABLE_DAYS)."""
        if not self.tmp_root.is_dir():
            return
        for fingerprint in sorted({_fingerprint_of(f) for f in self.tmp_root.iterdir()}):
            with self._unwritten(fingerprint) as free:
                for folder in self.tmp_folders(fingerprint) if free else []:
                    if not _has_checkpoints(folder) or time.time() - folder.stat().st_mtime > RESUMABLE_DAYS * 86400:
                        shutil.rmtree(folder, ignore_errors=True)

    def tmp_folders(self, fingerprint: str) -> list[Path]:
        """The temporary folders of `fingerprint`, finished writing or not."""
        if not self.tmp_root.is_dir():
            return []
        return [f for f in self.tmp_root.iterdir() if _fingerprint_of(f) == fingerprint]


RESUMABLE_DAYS = 7


def _has_checkpoints(folder: Path) -> bool:
    return latest(folder) is not None


def _host() -> str:
    return socket.gethostname().replace("/", "_")


def _fingerprint_of(folder: Path) -> str:
    return folder.name.split("-")[0]  # fingerprint-host-pid-time: the rest is for people reading the folder
