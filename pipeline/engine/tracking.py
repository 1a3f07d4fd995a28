"""Experiment tracking: <run folder>/metrics.jsonl whatever the logger, and the trackers `logger.backends`
names (pipeline/trackers: W&B, TensorBoard, MLflow, Trackio; several at once), each given the same rows,
stage summaries, redacted config and report. Every tracker starts before any stage, so a tracker that
cannot (W&B online without a network) stops the chain before work; `logger=none` keeps metrics.jsonl only.
"""
from __future__ import annotations

import importlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, List, Optional

from pipeline.errors import ConfigError
from pipeline.redaction import redact
from pipeline.trackers import BACKENDS
from pipeline.trackers.base import RunInfo, Sink


@dataclass
class LoggerConfig:
    backends: List[str] = field(default_factory=lambda: ["wandb"])  # wandb | tensorboard | mlflow | trackio; [] none
    project: Optional[str] = None   # W&B project ($WANDB_PROJECT), MLflow experiment, Trackio project; null: tunechain
    entity: Optional[str] = None    # W&B: null: $WANDB_ENTITY, else your default entity
    mode: str = "auto"              # W&B: auto ($WANDB_MODE, else online when an API key is configured) | online | offline
    tags: List[str] = field(default_factory=list)  # W&B run tags


def backend_problems(logger: Any) -> list[str]:
    """What is wrong with `logger.backends` (plan time, beside the other out-of-range values)."""
    names = list(logger.get("backends") or []) if logger is not None else []
    unknown = [n for n in names if n not in BACKENDS]
    return [f"logger.backends: unknown {unknown}; valid: {', '.join(BACKENDS)} (or [] for none)"] if unknown else []


def start(names: list[str], cfg: LoggerConfig, run: RunInfo) -> list[Sink]:
    problems = backend_problems({"backends": names})
    if problems:
        raise ConfigError(problems[0])
    sinks = []
    for name in dict.fromkeys(names):
        module, cls = BACKENDS[name]
        sinks.append(getattr(importlib.import_module(module), cls)(cfg, run))
    return sinks


class Tracker:
    def __init__(self, cfg: LoggerConfig, run_dir: Path, config: dict[str, Any], name: str, group: str | None):
        self.run_dir = Path(run_dir)
        self.metrics_path = self.run_dir / "metrics.jsonl"
        self.steps: dict[str, int] = {}
        self.watchers: list = []  # callables (stage, step, logs) seeing every training log: pipeline/engine/pruning
        self.sinks = start(list(cfg.backends), cfg, RunInfo(self.run_dir, name, group, redact(config)))

    def log(self, stage: str, metrics: dict[str, Any], step: int | None = None) -> None:
        """Log a row of metrics for one stage (training curves, eval results)."""
        if step is None:
            step = self.steps.get(stage, -1) + 1
        self.steps[stage] = step
        row = {"time": round(time.time(), 3), "stage": stage, "step": step, **metrics}
        with open(self.metrics_path, "a") as handle:
            handle.write(json.dumps(redact(row), ensure_ascii=False, default=str) + "\n")
        numeric = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        for sink in self.sinks if numeric else ():
            sink.log(stage, numeric, step)

    def summary(self, stage: str, metrics: dict[str, Any]) -> None:
        kept = {k: v for k, v in metrics.items() if isinstance(v, (int, float, str))}
        for sink in self.sinks:
            sink.summary(stage, kept)

    def log_report(self, table: list[list[str]], plot: Path, html: Path) -> None:
        """The chain's variant table, compression plot and report (HTML and markdown)."""
        for sink in self.sinks:
            sink.report(table, plot, html, html.with_suffix(".md"))

    def log_artifact(self, stage: str, artifact) -> None:
        for sink in self.sinks:
            sink.artifact(stage, artifact)

    def locations(self) -> list[str]:
        """One line per tracker for the run's summary."""
        return [line for line in (sink.where() for sink in self.sinks) if line]

    def trainer_callback(self, stage: str):
        """A transformers TrainerCallback that sends trainer logs here."""
        from transformers import TrainerCallback

        tracker = self

        class _StageLogs(TrainerCallback):
            def on_log(self, args, state, control, logs=None, **kwargs):
                if logs:
                    tracker.log(stage, {k: v for k, v in logs.items() if isinstance(v, (int, float))}, step=state.global_step)
                    for watch in tracker.watchers:  # may raise pruning.Pruned: the trainer stops there
                        watch(stage, state.global_step, logs)

        return _StageLogs()

    def finish(self) -> None:
        for sink in self.sinks:  # kept: the run's summary names where each one wrote
            sink.finish()
