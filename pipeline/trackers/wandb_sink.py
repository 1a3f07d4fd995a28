"""Weights & Biases: one run per chain, offline run files under the run folder unless an API key is
configured. W&B's own environment variables win over the defaults: WANDB_MODE (offline, online,
disabled), WANDB_PROJECT, WANDB_ENTITY, WANDB_DIR. An online run that cannot start (no network, a bad
key) stops before any stage, in one line that says how to go offline. Stage metrics go under
`<stage>/...`, each stage with its own step counter so that several trainers share one run."""
from __future__ import annotations

import netrc
import os
from pathlib import Path
from typing import Any

from pipeline.errors import ConfigError
from pipeline.hub import reachable
from pipeline.redaction import redacted_argv, scrub
from pipeline.trackers.base import RunInfo, Sink

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


class WandbSink(Sink):
    label = "W&B"

    def __init__(self, cfg, run: RunInfo):
        import wandb

        self.mode = wandb_mode(cfg.mode)
        if self.mode == "online":
            _check_reachable()
        try:
            with redacted_argv():  # W&B records the command line in its run files
                self.run = wandb.init(
                    project=cfg.project or os.environ.get("WANDB_PROJECT") or "tunechain", entity=cfg.entity,
                    name=run.name, group=run.group, tags=list(cfg.tags), config=run.config,
                    dir=os.environ.get("WANDB_DIR") or str(run.run_dir), mode=self.mode, reinit="create_new",
                    settings=wandb.Settings(silent=True, x_disable_stats=True, console="off"),
                )
        except Exception as e:  # noqa: BLE001 - AuthenticationError, UsageError, CommError: one line for all
            first = scrub(str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__)[:200]
            raise TrackingError(f"logger: W&B ({self.mode}) could not start: {first}; {OFFLINE_HINT}") from None
        self.dir = Path(self.run.dir).parent

    def log(self, stage: str, metrics: dict[str, float], step: int) -> None:
        if metrics:
            self.run.define_metric(f"{stage}/*", step_metric=f"{stage}/step")
            self.run.log({**{f"{stage}/{k}": v for k, v in metrics.items()}, f"{stage}/step": step})

    def summary(self, stage: str, metrics: dict[str, Any]) -> None:
        for key, value in metrics.items():
            self.run.summary[f"{stage}/{key}"] = value

    def report(self, table: list[list[str]], plot: Path, html: Path, markdown: Path) -> None:
        import wandb

        logged: dict[str, Any] = {}
        if table:
            logged["report/variants"] = wandb.Table(columns=table[0], data=table[1:])
        if plot.is_file():
            logged["report/compression_vs_quality"] = wandb.Image(str(plot))
        if html.is_file():
            logged["report/html"] = wandb.Html(html.read_text())
        if logged:
            self.run.log(logged)

    def artifact(self, stage: str, artifact) -> None:
        """Lineage in W&B: a reference to the stored folder, with its parent."""
        import wandb

        logged = wandb.Artifact(f"{stage}-{artifact.kind}", type=str(artifact.kind),
                                metadata={"fingerprint": artifact.fingerprint, "parent": artifact.parent,
                                          "format": artifact.format})
        logged.add_reference(f"file://{artifact.path}", checksum=False)
        self.run.log_artifact(logged)

    def where(self) -> str | None:
        hint = f"  (upload: wandb sync {self.dir})" if self.mode == "offline" else ""
        return f"W&B:        {self.dir}{hint}"

    def finish(self) -> None:
        self.run.finish()
