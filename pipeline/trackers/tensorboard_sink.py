"""TensorBoard: event files under <run folder>/tensorboard (`tensorboard --logdir outputs` shows every
run). Rows as scalars `<stage>/<key>` at the stage's step; a finished stage's figures as `summary/...`;
the redacted config and the report as text; the compression plot as an image."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pipeline.trackers.base import RunInfo, Sink

FOLDER = "tensorboard"


class TensorBoardSink(Sink):
    label = "TensorBoard"

    def __init__(self, cfg, run: RunInfo):
        from torch.utils.tensorboard import SummaryWriter

        self.dir = Path(run.run_dir) / FOLDER
        self.writer = SummaryWriter(log_dir=str(self.dir))
        self.writer.add_text("config", f"```json\n{json.dumps(run.config, indent=1, default=str)}\n```", 0)

    def log(self, stage: str, metrics: dict[str, float], step: int) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(f"{stage}/{key}", value, step)

    def summary(self, stage: str, metrics: dict[str, Any]) -> None:
        for key, value in metrics.items():
            if isinstance(value, (int, float)):
                self.writer.add_scalar(f"summary/{stage}/{key}", value, 0)

    def report(self, table: list[list[str]], plot: Path, html: Path, markdown: Path) -> None:
        if markdown.is_file():
            self.writer.add_text("report", markdown.read_text(), 0)
        if plot.is_file():
            import numpy as np
            from PIL import Image

            self.writer.add_image("report/compression_vs_quality", np.asarray(Image.open(plot).convert("RGB")), 0,
                                  dataformats="HWC")

    def where(self) -> str | None:
        return f"TensorBoard: tensorboard --logdir {self.dir}"

    def finish(self) -> None:
        self.writer.close()
