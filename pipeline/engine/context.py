"""What a stage's `run` receives besides its config: its inputs and the run's context."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.artifact import Artifact
from pipeline.models.config import ModelConfig


@dataclass
class Inputs:
    artifacts: list[Artifact]

    @property
    def primary(self) -> Artifact:
        return self.artifacts[0]


@dataclass
class StageContext:
    name: str                 # the stage's name in the recipe
    out_dir: Path             # write the artifact here (a temporary folder, renamed when done)
    run_dir: Path             # the Hydra run folder (logs, chain.json, report)
    model: ModelConfig        # the chain's model config (tokenizer, chat template, LoRA targets)
    device: str               # cpu | cuda
    seed: int
    tracker: Any              # pipeline.engine.tracking.Tracker
    chain: dict[str, Artifact] = field(default_factory=dict)  # artifacts made so far, by stage name
    hardware: dict[str, Any] = field(default_factory=dict)

    def log(self, message: str) -> None:
        print(f"[{self.name}] {message}", flush=True)
