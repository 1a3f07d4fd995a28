"""The runs the dashboard shows: every run folder (a chain.json) under the output roots, read as they are
on disk (chain.json is replaced atomically by the runner, so a running chain is read, never locked)."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pipeline.engine import report
from pipeline.nested import flat


@dataclass
class Run:
    id: str                     # the folder under its root, e.g. outputs/2026-12-07/10-00-00_quickstart
    folder: Path
    chain: dict[str, Any]
    headline: dict[str, str] = field(default_factory=dict)

    @property
    def stages(self) -> list[dict[str, Any]]:
        return self.chain.get("stages", [])

    @property
    def status(self) -> str:
        return self.chain.get("status", "?")

    @property
    def seconds(self) -> float:
        return round(sum(s.get("seconds") or 0 for s in self.stages), 1)

    @property
    def live_stage(self) -> str | None:
        return next((s["name"] for s in self.stages if s["status"] == "running"), None)

    def progress(self) -> str:
        """The running stage's last logged step of its max_steps (its metrics.jsonl rows), or ''."""
        stage = self.live_stage
        if stage is None:
            return ""
        step = None
        metrics = self.folder / "metrics.jsonl"
        if metrics.is_file():
            for line in metrics.read_text().splitlines():
                row = json.loads(line)
                if row.get("stage") == stage:
                    step = row.get("step")
        total = ((self.config().get("stages") or {}).get(stage) or {}).get("max_steps")
        if step is None:
            return "started"
        return f"step {step} of {total}" if isinstance(total, int) and total > 0 else f"step {step}"

    def config(self) -> dict[str, Any]:
        """The composed config Hydra saved (.hydra/config.yaml), {} where there is none."""
        path = self.folder / ".hydra" / "config.yaml"
        return (yaml.safe_load(path.read_text()) or {}) if path.is_file() else {}


def read_run(root: Path, folder: Path) -> Run | None:
    try:
        chain = json.loads((folder / "chain.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    run = Run(id=f"{root.name}/{folder.relative_to(root).as_posix()}", folder=folder, chain=chain)
    table = report.results_table(run.stages)
    columns = table[0][4:]
    for row in table[1:]:  # the last value of each headline metric along the chain
        for name, value in zip(columns, row[4:]):
            if value != "-":
                run.headline[name] = value
    return run


def find_runs(roots: list[Path]) -> list[Run]:
    """Every run under the roots, newest first."""
    found = []
    for root in roots:
        if not root.is_dir():
            continue
        for chain in root.rglob("chain.json"):
            run = read_run(root, chain.parent)
            if run is not None:
                found.append(run)
    return sorted(found, key=lambda r: r.chain.get("started", ""), reverse=True)


def by_id(roots: list[Path], run_id: str) -> Run | None:
    name, _, rest = run_id.partition("/")
    for root in roots:
        if root.name == name and rest:
            folder = (root / rest).resolve()
            if folder.is_relative_to(root.resolve()) and (folder / "chain.json").is_file():
                return read_run(root, folder)
    return None


def config_differences(runs: list[Run]) -> list[list[str]]:
    """Rows of the config keys whose values differ between the runs (key, then one value per run)."""
    return differences([r.config() for r in runs])


def differences(configs: list[dict[str, Any]]) -> list[list[str]]:
    """Rows of the (flattened) keys whose values differ between the configs: key, then one value each."""
    flats = [flat(c) for c in configs]
    keys = sorted(set().union(*flats))
    rows = []
    for key in keys:
        values = [json.dumps(f.get(key, "(unset)"), default=str) for f in flats]
        if len(set(values)) > 1:
            rows.append([key, *values])
    return rows


def metric_rows(runs: list[Run]) -> list[list[str]]:
    """Rows of stage/metric -> value per run, for every headline metric any of the runs has."""
    headline = report.headline_metrics()
    values: dict[tuple[str, str], list[str]] = {}
    for index, run in enumerate(runs):
        for stage in run.stages:
            for metric, value in (stage.get("metrics") or {}).items():
                if metric in headline:
                    values.setdefault((stage["name"], metric), ["-"] * len(runs))[index] = report.fmt(metric, value)
    return [[stage, metric, *cells] for (stage, metric), cells in sorted(values.items())]


def log_tail(run: Run, lines: int = 20) -> str:
    """The last lines of a run's main.log (what a running chain is doing now)."""
    path = run.folder / "main.log"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.is_file() else ""


def items(run: Run, stage: str, limit: int = 50) -> list[dict[str, Any]]:
    """An eval stage's per-item records (predictions.jsonl in its artifact), the first `limit`."""
    entry = next((s for s in run.stages if s["name"] == stage), None)
    path = Path(entry["artifact"]) / "predictions.jsonl" if entry and entry.get("artifact") else None
    if path is None or not path.is_file():
        return []
    rows = []
    with open(path) as handle:
        for line in handle:
            rows.append(json.loads(line))
            if len(rows) == limit:
                break
    return rows
