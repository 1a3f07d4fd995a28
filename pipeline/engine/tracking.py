"""Experiment tracking: one W&B run per chain, and a local metrics.jsonl whatever the logger.

W&B runs offline (real run files under the run folder, no network) unless an API key is
configured; `logger=none` turns it off. Stage metrics are logged under `<stage>/...`, each stage
with its own step counter so that several trainers can share one run.
"""
from __future__ import annotations

import json
import netrc
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, List, Optional

SECRET_KEY = re.compile(r"(api_?key|token|secret|password|passwd|credential)", re.IGNORECASE)
NAMES_A_VARIABLE = re.compile(r"_env$", re.IGNORECASE)  # e.g. api_key_env: the variable's name, not the key


@dataclass
class LoggerConfig:
    backend: str = "wandb"          # wandb | none
    project: str = "tunechain"
    entity: Optional[str] = None
    mode: str = "auto"              # auto (online when an API key is configured) | online | offline
    tags: List[str] = field(default_factory=list)


def redact(obj: Any) -> Any:
    """Drop values of secret-looking keys before a config is logged or saved."""
    if isinstance(obj, dict):
        return {k: ("<redacted>" if SECRET_KEY.search(str(k)) and not NAMES_A_VARIABLE.search(str(k))
                     and v not in (None, "") else redact(v)) for k, v in obj.items()}
    if isinstance(obj, list):
        return [redact(v) for v in obj]
    return obj


def wandb_mode(requested: str) -> str:
    if requested != "auto":
        return requested
    if os.environ.get("WANDB_API_KEY"):
        return "online"
    try:
        if netrc.netrc().authenticators("api.wandb.ai"):
            return "online"
    except (FileNotFoundError, netrc.NetrcParseError):
        pass
    return "offline"


class Tracker:
    def __init__(self, cfg: LoggerConfig, run_dir: Path, config: dict[str, Any], name: str, group: str | None):
        self.run_dir = Path(run_dir)
        self.metrics_path = self.run_dir / "metrics.jsonl"
        self.steps: dict[str, int] = {}
        self.wandb_run = None
        self.wandb_dir: Path | None = None
        if cfg.backend == "wandb":
            self._start_wandb(cfg, redact(config), name, group)

    def _start_wandb(self, cfg: LoggerConfig, config: dict[str, Any], name: str, group: str | None) -> None:
        import wandb

        mode = wandb_mode(cfg.mode)
        self.wandb_run = wandb.init(
            project=cfg.project, entity=cfg.entity, name=name, group=group, tags=list(cfg.tags),
            config=config, dir=str(self.run_dir), mode=mode, reinit="create_new",
            settings=wandb.Settings(silent=True, x_disable_stats=True, console="off"),
        )
        self.wandb_dir = Path(self.wandb_run.dir).parent
        self.wandb_mode = mode

    def log(self, stage: str, metrics: dict[str, Any], step: int | None = None) -> None:
        """Log a row of metrics for one stage (training curves, eval results)."""
        if step is None:
            step = self.steps.get(stage, -1) + 1
        self.steps[stage] = step
        row = {"time": round(time.time(), 3), "stage": stage, "step": step, **metrics}
        with open(self.metrics_path, "a") as handle:
            handle.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
        if self.wandb_run is not None:
            numeric = {f"{stage}/{k}": v for k, v in metrics.items() if isinstance(v, (int, float))}
            if numeric:
                self.wandb_run.define_metric(f"{stage}/*", step_metric=f"{stage}/step")
                self.wandb_run.log({**numeric, f"{stage}/step": step})

    def summary(self, stage: str, metrics: dict[str, Any]) -> None:
        if self.wandb_run is not None:
            for key, value in metrics.items():
                if isinstance(value, (int, float, str)):
                    self.wandb_run.summary[f"{stage}/{key}"] = value

    def log_report(self, table: list[list[str]], plot: Path, html: Path) -> None:
        """The chain's variant table, compression plot and HTML report, into the W&B run."""
        if self.wandb_run is None:
            return
        import wandb

        logged: dict[str, Any] = {}
        if table:
            logged["report/variants"] = wandb.Table(columns=table[0], data=table[1:])
        if plot.is_file():
            logged["report/compression_vs_quality"] = wandb.Image(str(plot))
        if html.is_file():
            logged["report/html"] = wandb.Html(html.read_text())
        if logged:
            self.wandb_run.log(logged)

    def log_artifact(self, stage: str, artifact) -> None:
        """Record lineage in W&B: a reference to the stored folder, with its parent."""
        if self.wandb_run is None:
            return
        import wandb

        logged = wandb.Artifact(f"{stage}-{artifact.kind}", type=artifact.kind,
                                metadata={"fingerprint": artifact.fingerprint, "parent": artifact.parent,
                                          "format": artifact.format})
        logged.add_reference(f"file://{artifact.path}", checksum=False)
        self.wandb_run.log_artifact(logged)

    def trainer_callback(self, stage: str):
        """A transformers TrainerCallback that sends trainer logs here."""
        from transformers import TrainerCallback

        tracker = self

        class _StageLogs(TrainerCallback):
            def on_log(self, args, state, control, logs=None, **kwargs):
                if logs:
                    tracker.log(stage, {k: v for k, v in logs.items() if isinstance(v, (int, float))}, step=state.global_step)

        return _StageLogs()

    def finish(self) -> None:
        if self.wandb_run is not None:
            self.wandb_run.finish()
            self.wandb_run = None
