"""After a multirun sweep: one table of every job's overrides and metrics (summary.md too)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback

from pipeline.engine.report import COMPARED, fmt

# Quality, not speed: a sweep compares what each setting produced.
SWEPT = COMPARED + ("train_loss", "size_mb", "parity_identical")  # exports: size and agreement with the source


def summarize(sweep_dir: Path) -> str:
    jobs = []
    for path in sorted(Path(sweep_dir).glob("*/chain.json"), key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0):
        jobs.append((path.parent.name, json.loads(path.read_text())))
    if not jobs:
        return f"sweep {sweep_dir}: no finished jobs"
    columns: list[str] = []
    for _, record in jobs:
        for entry in record["stages"]:
            for metric in SWEPT:
                name = f"{entry['name']}.{metric}"
                if metric in entry.get("metrics", {}) and name not in columns:
                    columns.append(name)
    rows = [["job", "overrides", "status"] + columns]
    for job, record in jobs:
        metrics = {f"{e['name']}.{m}": v for e in record["stages"] for m, v in e.get("metrics", {}).items()}
        rows.append([job, " ".join(record.get("overrides", [])) or "-", record["status"]]
                    + [fmt(c.split(".", 1)[1], metrics.get(c)) for c in columns])
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    table = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)) for row in rows]
    (Path(sweep_dir) / "summary.md").write_text(
        "| " + " | ".join(rows[0]) + " |\n|" + "---|" * len(rows[0]) + "\n"
        + "".join("| " + " | ".join(r) + " |\n" for r in rows[1:]))
    return "\n".join([f"== sweep summary: {sweep_dir} ({len(jobs)} jobs)"] + table)


class SweepSummary(Callback):
    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        print("\n" + summarize(Path(config.hydra.sweep.dir)), flush=True)
