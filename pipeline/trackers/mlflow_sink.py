"""MLflow: one run per chain in the experiment `logger.project` (default tunechain), in the tracking
store MLFLOW_TRACKING_URI names, else a local file store under <run folder>/mlruns (MLflow 3 keeps its file
store in maintenance mode behind MLFLOW_ALLOW_FILE_STORE, which tunechain sets for that default only).
Rows as metrics `<stage>/<key>` at the stage's step, a finished stage's figures as `summary/...`, the
redacted config as params and config.json, the report and plot as artifacts."""
from __future__ import annotations

import os
import re
import time
from pathlib import Path
from typing import Any

from pipeline.nested import flat
from pipeline.trackers.base import RunInfo, Sink

FOLDER = "mlruns"
PARAM_CHARS = 500  # a param value's length kept (MLflow refuses longer than 6,000)


def metric_name(name: str) -> str:
    """MLflow takes letters, digits, _ - . / and spaces in names."""
    return re.sub(r"[^\w\-./ ]", "_", name)


class MlflowSink(Sink):
    label = "MLflow"

    def __init__(self, cfg, run: RunInfo):
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        self.uri = os.environ.get("MLFLOW_TRACKING_URI")
        if not self.uri:
            self.uri = (Path(run.run_dir) / FOLDER).resolve().as_uri()
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.client = MlflowClient(tracking_uri=self.uri)
        experiment_name = cfg.project or "tunechain"
        experiment = self.client.get_experiment_by_name(experiment_name)
        experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(experiment_name)
        tags = {"mlflow.runName": run.name, **({"group": run.group} if run.group else {})}
        self.run_id = self.client.create_run(experiment_id, run_name=run.name, tags=tags).info.run_id
        params = [Param(k, str(v)[:PARAM_CHARS]) for k, v in flat(run.config).items()]
        for start in range(0, len(params), 100):  # MLflow's batch limit
            self.client.log_batch(self.run_id, params=params[start:start + 100])
        self.client.log_dict(self.run_id, run.config, "config.json")

    def log(self, stage: str, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(metric_name(f"{stage}/{k}"), float(v), now, step)
                                                    for k, v in metrics.items()])

    def summary(self, stage: str, metrics: dict[str, Any]) -> None:
        numbers = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
        if numbers:
            self.log(f"summary/{stage}", numbers, 0)

    def report(self, table: list[list[str]], plot: Path, html: Path, markdown: Path) -> None:
        for path in (markdown, html, plot):
            if path.is_file():
                self.client.log_artifact(self.run_id, str(path), "report")
        if table:
            self.client.log_table(self.run_id, {c: [row[i] for row in table[1:]] for i, c in enumerate(table[0])},
                                  "report/variants.json")

    def where(self) -> str | None:
        return f"MLflow:     mlflow ui --backend-store-uri {self.uri}  (run {self.run_id})"

    def finish(self) -> None:
        self.client.set_terminated(self.run_id)
