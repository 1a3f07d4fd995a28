"""What stages exchange: an artifact is a folder with an `artifact.json` manifest (kind, path,
fingerprint, format, what it derives from, metrics), and the rules that follow from its kind:
which model is under it, where its tokenizer is, which GGUF file it is, how many bytes of weights it
needs. Every package uses this record; where artifacts are kept is the store's business
(pipeline/engine/store.py)."""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from pipeline.errors import PlanError
from pipeline.redaction import redact

MANIFEST = "artifact.json"


MMPROJ = "mmproj"  # llama.cpp's name prefix for the image projector GGUF beside a model's


class ArtifactKind(str, Enum):
    """What an artifact is. A str enum: artifact.json holds the plain names, and a kind compares equal
    to its name."""

    model = "model"      # an HF folder (also bnb and GPTQ checkpoints) or a hub id
    adapter = "adapter"  # a peft adapter folder; base_model is the model it applies to
    eval = "eval"        # an eval report
    gguf = "gguf"        # a folder with a .gguf file (or the file itself)
    serve = "serve"      # a server's record
    push = "push"        # a hub upload's record (repository, revision, commit)
    reward_model = "reward_model"  # an HF folder of a sequence-classification model scoring a response (one float)

    def __str__(self) -> str:
        return self.value


@dataclass
class Artifact:
    kind: ArtifactKind             # model | adapter | eval | gguf | serve (a plain name is converted)
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
    files: dict[str, dict] = field(default_factory=dict)  # a stored artifact's files: size, sha256 (engine/integrity.py)

    def __post_init__(self) -> None:
        self.kind = ArtifactKind(self.kind)

    def model_under(self) -> str:
        """The model folder or hub id this artifact's weights are: an adapter's base, else its own path."""
        return self.base_model if self.kind == ArtifactKind.adapter else self.path

    def tokenizer_dir(self) -> str:
        """Where this artifact's tokenizer lives: its own folder if it saved one, else its base."""
        folder = Path(self.path)
        if (folder / "tokenizer_config.json").is_file():
            return str(folder)
        return self.base_model or self.path

    def gguf_file(self) -> Path:
        """The .gguf file of a GGUF artifact: its path itself, the file its manifest names, else the first one."""
        path = Path(self.path)
        if path.is_file():
            return path
        name = self.meta.get("file")
        found = [path / name] if name else sorted(p for p in path.glob("*.gguf") if not p.name.startswith(MMPROJ))
        if not found or not found[0].is_file():
            raise PlanError(f"artifact {self.path} has no .gguf file")
        return found[0]

    def mmproj_file(self) -> Path | None:
        """A vision-language GGUF's image projector (llama.cpp's mmproj file), None for a text model."""
        path = Path(self.path)
        name = self.meta.get("mmproj")
        if name:
            return path / name
        found = sorted(path.glob(f"{MMPROJ}*.gguf")) if path.is_dir() else []
        return found[0] if found else None

    def size_on_disk(self) -> int:
        """Bytes of the weights this artifact needs: its GGUF file, its weight files, or an adapter plus its base."""
        if self.kind == ArtifactKind.gguf:
            mmproj = self.mmproj_file()
            return self.gguf_file().stat().st_size + (mmproj.stat().st_size if mmproj else 0)
        weights = weight_bytes(self.path)
        if self.kind == ArtifactKind.adapter and self.base_model:
            weights += weight_bytes(self.base_model)
        return weights

    def to_json(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "kind": self.kind.value}

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
