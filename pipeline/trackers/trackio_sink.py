"""Trackio (Hugging Face's local-first tracker): one run per chain in the project `logger.project` (default
tunechain), in trackio's own local database (TRACKIO_DIR, default ~/.cache/huggingface/trackio;
`trackio show` opens it). Rows as `<stage>/<key>`, a finished stage's figures as `summary/...`, the
redacted config as the run's config, the report as markdown."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.trackers.base import RunInfo, Sink


class TrackioSink(Sink):
    label = "Trackio"

    def __init__(self, cfg, run: RunInfo):
        import trackio

        self.project = cfg.project or "tunechain"
        self.name = run.name
        self.run = trackio.init(project=self.project, name=run.name, group=run.group, config=run.config,
                                embed=False, auto_log_gpu=False, auto_log_cpu=False)
        self.step = 0  # trackio keeps one step axis per run: each row goes on, the stage's own step is a column

    def log(self, stage: str, metrics: dict[str, float], step: int) -> None:
        self.run.log({**{f"{stage}/{k}": v for k, v in metrics.items()}, f"{stage}/step": step}, step=self.step)
        self.step += 1

    def summary(self, stage: str, metrics: dict[str, Any]) -> None:
        numbers = {f"summary/{stage}/{k}": v for k, v in metrics.items() if isinstance(v, (int, float))}
        if numbers:
            self.run.log(numbers, step=self.step)
            self.step += 1

    def report(self, table: list[list[str]], plot: Path, html: Path, markdown: Path) -> None:
        import trackio

        if markdown.is_file():
            self.run.log({"report": trackio.Markdown(markdown.read_text())}, step=self.step)
            self.step += 1

    def where(self) -> str | None:
        return f"Trackio:    trackio show --project {self.project}  (run {self.name})"

    def finish(self) -> None:
        self.run.finish()
