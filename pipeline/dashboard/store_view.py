"""The store as the dashboard shows it: each artifact with its lineage (parent, base, children), which runs
built and reused it, its size, and what its fingerprint covered; removal of an artifact nothing depends
on, under the store's own lock for that fingerprint (a chain writing it waits, or is waited for)."""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.artifact import MANIFEST, Artifact, ArtifactKind
from pipeline.dashboard.runs import Run
from pipeline.engine.store import Store


@dataclass
class Stored:
    artifact: Artifact
    folder: Path
    bytes: int
    built_by: list[tuple[str, str]] = field(default_factory=list)   # (run id, stage)
    reused_by: list[tuple[str, str]] = field(default_factory=list)
    children: list[str] = field(default_factory=list)              # fingerprints made from it
    explained: dict[str, Any] = field(default_factory=dict)        # what its fingerprint hashed (chain.json)

    @property
    def fingerprint(self) -> str:
        return self.artifact.fingerprint

    @property
    def removable(self) -> bool:
        return not self.children


def scan(root: Path, runs: list[Run]) -> dict[str, Stored]:
    """Every stored artifact by fingerprint (manifests only: a folder still being written has none)."""
    found: dict[str, Stored] = {}
    for kind in ArtifactKind:
        for manifest in sorted((root / kind.value).glob(f"*/{MANIFEST}")) if (root / kind.value).is_dir() else []:
            try:
                artifact = Artifact.from_json(json.loads(manifest.read_text()))
            except (OSError, ValueError, TypeError):
                continue
            size = sum(f.get("size", 0) for f in artifact.files.values())
            found[artifact.fingerprint] = Stored(artifact, manifest.parent, size)
    by_path = {str(s.folder): s for s in found.values()}
    for stored in found.values():
        for named in (stored.artifact.parent, stored.artifact.base_model):
            parent = found.get(named or "") or by_path.get(named or "")
            if parent is not None and parent is not stored and stored.fingerprint not in parent.children:
                parent.children.append(stored.fingerprint)
    for run in runs:
        for stage in run.stages:
            stored = found.get(stage.get("fingerprint") or "")
            if stored is None:
                continue
            if stage["status"] == "done":
                stored.built_by.append((run.id, stage["name"]))
            elif stage["status"] == "reused":
                stored.reused_by.append((run.id, stage["name"]))
            if stage.get("fingerprint_inputs"):
                stored.explained = stage["fingerprint_inputs"]
    return found


def metric_rows(chosen: list[Stored]) -> list[list[str]]:
    """Rows of metric -> value per artifact, for every number any of them recorded."""
    names = sorted({k for s in chosen for k, v in s.artifact.metrics.items() if isinstance(v, (int, float))})
    return [[name, *(str(s.artifact.metrics.get(name, "-")) for s in chosen)] for name in names]


class StillNeeded(Exception):
    """An artifact that others were made from."""


def remove(root: Path, fingerprint: str, runs: list[Run]) -> Path:
    """Delete an artifact nothing was made from, holding its fingerprint's lock."""
    stored = scan(root, runs).get(fingerprint)
    if stored is None:
        raise KeyError(fingerprint)
    if not stored.removable:
        raise StillNeeded(f"{fingerprint} is the parent or base of {', '.join(stored.children)}")
    with Store(root, lock_timeout_s=10).lock(fingerprint, announce=lambda message: None):
        shutil.rmtree(stored.folder)
    return stored.folder
