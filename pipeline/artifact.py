"""What stages exchange: an artifact is a folder with an `artifact.json` manifest (kind, path,
fingerprint, format, what it derives from, metrics). Every package uses this record; where
artifacts are kept is the store's business (pipeline/engine/store.py)."""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MANIFEST = "artifact.json"


@dataclass
class Artifact:
    kind: str                      # model | adapter | eval | ...
    path: str                      # folder (or hub id for a base model)
    fingerprint: str
    format: str = ""               # hf-safetensors | peft-lora | eval-report | hub
    base_model: str | None = None  # what an adapter applies to / what a model derives from
    parent: str | None = None      # fingerprint of the input it was made from
    stage: str | None = None       # stage name that made it
    metrics: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    created: str = ""

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Artifact":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    @classmethod
    def read(cls, folder: Path) -> "Artifact":
        return cls.from_json(json.loads((Path(folder) / MANIFEST).read_text()))


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON so that readers see the old or the new file, never half of one; never a secret
    (pipeline.redaction: every JSON file tunechain writes goes through here)."""
    from pipeline.redaction import redact

    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(redact(data), indent=2, ensure_ascii=False, default=str) + "\n")
    os.replace(tmp, path)


WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt")


def weight_bytes(folder: Path | str | None) -> int:
    """The one size measure: bytes of a model folder's weight files (0 for no folder)."""
    if folder is None or not Path(folder).is_dir():
        return 0
    return sum(f.stat().st_size for f in Path(folder).iterdir() if f.suffix in WEIGHT_SUFFIXES)
