"""Sweeps: the objective a job returns to a searching sweeper (`sweep.objective: <stage>.<metric>`), and after
the multirun one table of every job's overrides and metrics (summary.md), ranked by the objective when there is
one, with objective.png: the objective against each swept parameter."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

from hydra.experimental.callback import Callback

from pipeline.engine.pruning import spec_of
from pipeline.engine.report import COMPARED, fmt
from pipeline.errors import ConfigError

# Quality, not speed: a sweep compares what each setting produced.
SWEPT = COMPARED + ("train_loss", "size_mb", "parity_identical")  # exports: size and agreement with the source


def objective_of(cfg: Any) -> Optional[tuple[str, str]]:
    """(stage, metric) of `sweep.objective`, or None when no objective is set."""
    name = (cfg.get("sweep") or {}).get("objective")
    if not name:
        return None
    stage, _, metric = str(name).partition(".")
    if not stage or not metric:
        raise ConfigError(f"sweep.objective: '{name}'; valid: <stage>.<metric>, e.g. eval_tuned.math_accuracy")
    return stage, metric


def check_objective(cfg: Any, stages: list[str]) -> None:
    """Plan time: the objective's stage (and the pruned stage) are in the chain."""
    spec_of(cfg, stages)
    found = objective_of(cfg)
    if found and found[0] not in stages:
        raise ConfigError(f"sweep.objective: no stage '{found[0]}' in this chain; its stages: {', '.join(stages)}")


def objective_value(cfg: Any, record: dict[str, Any], minimize: bool = False) -> Optional[float]:
    """The job's objective, read from its chain record (None: no objective, or a dry run); a pruned job's is the
    worst there is, so the sampler leaves its region."""
    found = objective_of(cfg)
    if not found or not record:
        return None
    if record.get("status") == "pruned":
        return float("inf") if minimize else float("-inf")
    stage, metric = found
    metrics = next((s.get("metrics") or {} for s in record["stages"] if s["name"] == stage), {})
    value = metrics.get(metric)
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise ConfigError(f"sweep.objective: stage '{stage}' reported no number '{metric}'; its figures: "
                          f"{', '.join(k for k, v in metrics.items() if isinstance(v, (int, float))) or 'none'}")
    return float(value)


def minimizes(sweeper: Any) -> bool:
    """Whether the sweeper's `direction` asks for the lowest objective (maximize when it has none)."""
    return "min" in str((sweeper or {}).get("direction", "maximize")).lower()


def summarize(sweep_dir: Path, objective: Optional[str] = None, minimize: bool = False) -> str:
    jobs = []
    for path in sorted(Path(sweep_dir).glob("*/chain.json"), key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0):
        jobs.append((path.parent.name, json.loads(path.read_text())))
    if not jobs:
        return f"sweep {sweep_dir}: no finished jobs"
    columns: list[str] = [objective] if objective else []
    for _, record in jobs:
        for entry in record["stages"]:
            for metric in SWEPT:
                name = f"{entry['name']}.{metric}"
                if metric in entry.get("metrics", {}) and name not in columns:
                    columns.append(name)
    figures = {job: {f"{e['name']}.{m}": v for e in record["stages"] for m, v in e.get("metrics", {}).items()}
               for job, record in jobs}
    if objective:  # best first; jobs without the figure last
        sign = 1 if minimize else -1
        jobs.sort(key=lambda j: sign * figures[j[0]][objective]
                  if isinstance(figures[j[0]].get(objective), (int, float)) else float("inf"))
        _plot(Path(sweep_dir), objective, [(_swept(r), figures[job].get(objective)) for job, r in jobs])
    shared = set.intersection(*(set(r.get("overrides", [])) for _, r in jobs)) if len(jobs) > 1 else set()
    header = f"overrides (every job: {' '.join(sorted(shared))})" if shared else "overrides"
    rows = [["job", header, "status"] + columns]
    for job, record in jobs:  # what differs between the jobs
        rows.append([job, " ".join(o for o in record.get("overrides", []) if o not in shared) or "-", record["status"]]
                    + [fmt(c.split(".", 1)[1], figures[job].get(c)) for c in columns])
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    table = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)) for row in rows]
    (Path(sweep_dir) / "summary.md").write_text(
        "| " + " | ".join(rows[0]) + " |\n|" + "---|" * len(rows[0]) + "\n"
        + "".join("| " + " | ".join(r) + " |\n" for r in rows[1:]))
    return "\n".join([f"== sweep summary: {sweep_dir} ({len(jobs)} jobs)"] + table)


def _swept(record: dict[str, Any]) -> dict[str, str]:
    return dict(o.split("=", 1) for o in record.get("overrides", []) if "=" in o and not o.startswith(("~", "+")))


def _plot(sweep_dir: Path, objective: str, trials: list[tuple[dict[str, str], Any]]) -> None:
    """objective.png: one panel per parameter that varies across the jobs, the objective against its values."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scored = [(params, value) for params, value in trials if isinstance(value, (int, float))]
    varied = [k for k in dict.fromkeys(k for p, _ in scored for k in p) if len({p.get(k) for p, _ in scored}) > 1]
    if not varied:
        return
    figure, axes = plt.subplots(1, len(varied), figsize=(4 * len(varied), 3.2), squeeze=False)
    for axis, key in zip(axes[0], varied):
        points = [(_number(p.get(key)), v) for p, v in scored]
        if all(isinstance(x, float) for x, _ in points):
            axis.scatter([x for x, _ in points], [v for _, v in points])
            spread = max(x for x, _ in points) / max(1e-30, min(x for x, _ in points))
            if min(x for x, _ in points) > 0 and spread >= 20:
                axis.set_xscale("log")
        else:
            labels = sorted({str(x) for x, _ in points})
            axis.scatter([labels.index(str(x)) for x, _ in points], [v for _, v in points])
            axis.set_xticks(range(len(labels)), labels)
        axis.set_xlabel(key)
        axis.set_ylabel(objective)
    figure.tight_layout()
    figure.savefig(sweep_dir / "objective.png", dpi=100)
    plt.close(figure)


def _number(text: Any) -> Any:
    try:
        return float(text)
    except (TypeError, ValueError):
        return text


class SweepSummary(Callback):
    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        found = objective_of(config)
        print("\n" + summarize(Path(config.hydra.sweep.dir), ".".join(found) if found else None,
                                minimizes(config.hydra.sweeper)), flush=True)
