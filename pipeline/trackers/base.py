"""What every tracker receives, from pipeline/engine/tracking.py's Tracker (config already redacted)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class RunInfo:
    """The chain run a tracker records: its folder, W&B-style name and group, and redacted config."""
    run_dir: Path
    name: str
    group: str | None
    config: dict[str, Any]


class Sink:
    """A tracker. Every method but start may be left as is: a tracker without reports ignores them."""

    label = "tracker"

    def log(self, stage: str, metrics: dict[str, float], step: int) -> None:
        """One row of numbers of one stage at its own step (training curves, eval figures)."""

    def summary(self, stage: str, metrics: dict[str, float]) -> None:
        """A finished stage's figures."""

    def report(self, table: list[list[str]], plot: Path, html: Path, markdown: Path) -> None:
        """The chain's variants table, compression plot and report, at the end."""

    def artifact(self, stage: str, artifact: Any) -> None:
        """A stored artifact a stage made (lineage)."""

    def where(self) -> str | None:
        """One line for the run's summary: where the records are and how to look at them."""
        return None

    def finish(self) -> None:
        """Close the run."""
