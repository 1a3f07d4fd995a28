"""The stage contract: what every stage config has and the hooks the planner calls on it.

A stage kind is one file: a config dataclass that extends `StageConfig`, and a function registered
with `@stage` (pipeline/engine/registry.py). The planner (pipeline/engine/plan.py) calls every hook
below on every stage, in this order, and names no stage kind; a kind overrides only the hooks it needs.

    validate(where, earlier)      after the config is typed and in range: cross-field and cross-stage rules
    check_model(where, folder)    when the stage reads the chain's base model: what only its files can tell
    check_family(where, folder)   for every stage: what holds for every model made from the chain's model
                                  (its architecture, whether it takes images)
    check_tokenizer(where, tok)   for stages that override it, when the chain's model is local: what only its
                                  tokenizer as stages load it (model.chat_template applied) can tell
    check_device(where, device)   when the stage will run: what only the device can tell (4-bit kernels...)
    unused_datasets()             dataset fields this configuration does not read (not checked, not hashed)
    streamed_datasets()           dataset fields it can train from as a stream (`streaming: true`); the plan
                                  refuses streaming anywhere else, and without a positive max_steps
    memory_profile(sources)       what it does with the model, for the memory plan
    disk_bytes(n_params, dtype)   what it writes to the store, for the disk check
    also_reads()                  earlier stages it reads besides its inputs (an optional stage's skip follows)
    drop_inputs(names)            an optional stage it reads was skipped at plan time: go on without it (True),
                                  or be skipped too (False, the default)

A DatasetSpec field whose metadata says `images=True` (image questions: the exports' parity_images) is read,
checked and hashed for a vision-language model only, so the shipped data can name image sets that a text
model's chain never opens.

A hook raises ConfigError or PlanError with `where` (e.g. `stages.sft`) at the start of its message.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, List, Optional

from omegaconf import MISSING

from pipeline.models.memory import Workload
from pipeline.ranges import setting


@dataclass
class StageConfig:
    kind: str = setting(MISSING, "the stage kind (python main.py --help lists them)")
    inputs: Optional[List[str]] = setting(None, "earlier stages whose artifacts it reads; null: the latest earlier "
                                                "stage whose output this kind takes (or the chain's model)")
    optional: bool = setting(False, "true: where it cannot run here (no GPU, a missing extra), skip it and the stages "
                                    "that read it, saying why, instead of failing the plan")

    def validate(self, where: str, earlier: dict[str, Any]) -> None:
        """Rules across fields and stages; `earlier` maps each earlier stage's name to its plan step."""

    def check_model(self, where: str, folder: Path | None) -> None:
        """Rules that need the chain's base model (`folder`: its local files, None for a hub id)."""

    def check_family(self, where: str, folder: Path | None) -> None:
        """Rules on the architecture every model of the chain shares (`folder`: the chain's model, None for a hub
        id); called whatever the stage's input is, since training and merging keep the architecture."""

    def check_tokenizer(self, where: str, tokenizer: Any) -> None:
        """Rules on the chain's tokenizer as the stages load it (its chat template); the planner loads it only for
        stages that override this hook, and only from local files."""

    def check_device(self, where: str, device: str) -> None:
        """Rules that need the device ("cpu", "cuda", "mps"); only called when the stage will run."""

    def unused_datasets(self) -> set[str]:
        """Names of DatasetSpec fields this configuration does not read."""
        return set()

    @classmethod
    def streamed_datasets(cls) -> set[str]:
        """Names of DatasetSpec fields it can read as a stream (datasets.IterableDataset)."""
        return set()

    def memory_profile(self, sources: list[Any]) -> Workload:
        """What the stage does with the model; `sources` are the plan steps of its inputs."""
        return Workload()

    def disk_bytes(self, n_params: int, dtype: str) -> int:
        """Bytes it writes to the store for a model of `n_params` parameters in `dtype`."""
        return 0

    def also_reads(self) -> set[str]:
        """Names of earlier stages it reads besides `inputs` (a stage it compares with, a judge, a teacher)."""
        return set()

    def drop_inputs(self, names: set[str]) -> bool:
        """Stages it reads that were skipped (optional, cannot run here): True if it goes on without them,
        having removed them from its inputs; False (the default) skips it as well."""
        return False
