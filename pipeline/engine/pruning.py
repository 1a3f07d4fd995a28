"""Pruning a searching sweep's trials: a job whose training loss is worse than the median of the earlier jobs'
at the same step stops there (Optuna's MedianPruner), and returns the worst objective to the sweeper.

    sweep:
      objective: eval_tuned.math_accuracy
      prune: {stage: sft, startup_trials: 2, warmup_steps: 20}

Hydra's Optuna sweeper gives a job no handle on its trial, and optuna 2.10 (which it pins) cannot open a
shared SQL study under SQLAlchemy 2; so the earlier trials' curves come from the sweep folder (each job's
metrics.jsonl and chain.json), and each check asks optuna's MedianPruner about an in-memory study that holds
them. A pruned stage commits nothing (its checkpoints stay for a re-run), chain.json says `pruned`, and the
stages after it do not run. Stages that train in their own processes (several GPUs) are not pruned."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from pipeline.errors import ConfigError


class Pruned(BaseException):
    """A trial stopped by the pruner. A BaseException, as Interrupted is: no stage's `except Exception` and
    no optional-stage handling takes it for a failure."""

    def __init__(self, stage: str, step: int, loss: float, median_of: int):
        self.stage, self.step = stage, step
        super().__init__(f"{stage} pruned at step {step}: loss {loss:.4f} worse than the median of {median_of} "
                         f"earlier trials there")


@dataclass
class PruneSpec:
    stage: Optional[str] = None   # the training stage whose logged loss is compared (None: no pruning)
    startup_trials: int = 2       # trials that finish before any is pruned
    warmup_steps: int = 10        # steps a trial trains before it can be pruned


def spec_of(cfg: Any, stages: list[str]) -> Optional[PruneSpec]:
    """Plan time: sweep.prune checked against the chain (None when pruning is off)."""
    node = (cfg.get("sweep") or {}).get("prune") or {}
    spec = PruneSpec(**{k: node[k] for k in ("stage", "startup_trials", "warmup_steps") if k in node})
    if not spec.stage:
        return None
    if spec.stage not in stages:
        raise ConfigError(f"sweep.prune.stage: no stage '{spec.stage}' in this chain; its stages: {', '.join(stages)}")
    if spec.startup_trials < 1 or spec.warmup_steps < 0:
        raise ConfigError(f"sweep.prune: startup_trials {spec.startup_trials} and warmup_steps {spec.warmup_steps}; "
                          f"valid: startup_trials >= 1, warmup_steps >= 0")
    return spec


def curve(job: Path, stage: str) -> dict[int, float]:
    """A job's training loss by step, from its metrics.jsonl."""
    path = job / "metrics.jsonl"
    if not path.is_file():
        return {}
    rows = (json.loads(line) for line in path.read_text().splitlines() if line.strip())
    return {int(r["step"]): float(r["loss"]) for r in rows if r.get("stage") == stage and "loss" in r}


class MedianStop:
    """Called on every training log of the chosen stage; raises Pruned when Optuna's MedianPruner says so."""

    def __init__(self, spec: PruneSpec, job_dir: Path):
        self.spec, self.job_dir = spec, Path(job_dir)
        self.earlier = self._earlier_trials()
        self.mine: dict[int, float] = {}

    def _earlier_trials(self) -> list[tuple[str, dict[int, float]]]:
        found = []
        for sibling in sorted(p for p in self.job_dir.parent.iterdir() if p.is_dir() and p != self.job_dir):
            chain = sibling / "chain.json"
            status = json.loads(chain.read_text()).get("status") if chain.is_file() else None
            values = curve(sibling, self.spec.stage)
            if status in ("done", "pruned") and values:
                found.append((status, values))
        return found

    def __call__(self, stage: str, step: int, logs: dict[str, Any]) -> None:
        if stage != self.spec.stage or "loss" not in logs:
            return
        self.mine[step] = float(logs["loss"])
        if self._prune(step):
            completed = sum(status == "done" for status, _ in self.earlier)
            raise Pruned(stage, step, self.mine[step], completed)

    def _prune(self, step: int) -> bool:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        pruner = optuna.pruners.MedianPruner(n_startup_trials=self.spec.startup_trials,
                                             n_warmup_steps=self.spec.warmup_steps)
        study = optuna.create_study(direction="minimize", pruner=pruner)
        for status, values in self.earlier:
            state = optuna.trial.TrialState.COMPLETE if status == "done" else optuna.trial.TrialState.PRUNED
            study.add_trial(optuna.trial.create_trial(
                state=state, value=values[max(values)] if status == "done" else None, intermediate_values=values))
        trial = study.ask()
        for at, value in self.mine.items():
            trial.report(value, at)
        return trial.should_prune()
