"""Experiment tracking: one W&B run per chain, and a local metrics.jsonl whatever the logger.

W&B runs offline (real run files under the run folder, no network) unless an API key is
configured; `logger=none` turns it off. W&B's own environment variables win over the defaults:
WANDB_MODE (offline, online, disabled), WANDB_PROJECT, WANDB_ENTITY, WANDB_DIR. An online run that
cannot start (no network, a bad key) stops before any stage, in one line that says how to go offline. Stage metrics are logged under `<stage>/...`, each stage
with its own step counter so that several trainers can share one run.
"""
from __future__ import annotations

import json
import netrc
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, List, Optional

from pipeline.errors import ConfigError
from pipeline.hub import reachable
from pipeline.redaction import redact, redacted_argv, scrub

@dataclass
class LoggerConfig:
    backend: str = "wandb"          # wandb | none
    project: Optional[str] = None   # null: $WANDB_PROJECT, else "tunechain"
    entity: Optional[str] = None    # null: $WANDB_ENTITY, else your default entity
    mode: str = "auto"              # auto ($WANDB_MODE, else online when an API key is configured) | online | offline
    tags: List[str] = field(default_factory=list)


OFFLINE_HINT = "set WANDB_MODE=offline (or logger.mode=offline) to keep the run files locally, or logger=none"


class TrackingError(ConfigError):
    """W&B cannot start as configured."""


def wandb_mode(requested: str) -> str:
    if requested != "auto":
        return requested
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    if os.environ.get("WANDB_API_KEY"):
        return "online"
    try:
        if netrc.netrc().authenticators("api.wandb.ai"):
            return "online"
    except (FileNotFoundError, netrc.NetrcParseError):
        pass
    return "offline"


def _check_reachable() -> None:
    url = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")
    error = reachable(url)
    if error is not None:
        raise TrackingError(f"logger: W&B is online but {url} cannot be reached ({error.strerror or error}); "
                            f"{OFFLINE_HINT}") from None


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
        if mode == "online":
            _check_reachable()
        try:
            with redacted_argv():  # W&B records the command line in its run files
                self.wandb_run = wandb.init(
                    project=cfg.project or os.environ.get("WANDB_PROJECT") or "tunechain", entity=cfg.entity,
                    name=name, group=group, tags=list(cfg.tags), config=config,
                    dir=os.environ.get("WANDB_DIR") or str(self.run_dir), mode=mode, reinit="create_new",
                    settings=wandb.Settings(silent=True, x_disable_stats=True, console="off"),
                )
        except Exception as e:  # noqa: BLE001 - AuthenticationError, UsageError, CommError: one line for all
            first = scrub(str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__)[:200]
            raise TrackingError(f"logger: W&B ({mode}) could not start: {first}; {OFFLINE_HINT}") from None
        self.wandb_dir = Path(self.wandb_run.dir).parent
        self.wandb_mode = mode

    def log(self, stage: str, metrics: dict[str, Any], step: int | None = None) -> None:
        """Log a row of metrics for one stage (training curves, eval results)."""
        if step is None:
            step = self.steps.get(stage, -1) + 1
        self.steps[stage] = step
        row = {"time": round(time.time(), 3), "stage": stage, "step": step, **metrics}
        with open(self.metrics_path, "a") as handle:
            handle.write(json.dumps(redact(row), ensure_ascii=False, default=str) + "\n")
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
