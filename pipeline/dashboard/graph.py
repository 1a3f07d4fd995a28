"""A run's chain as an SVG: one box per stage in columns by depth (inputs to the left), an arrow from each
input, coloured by status; each box says kind, status, time and peak vs planned memory."""
from __future__ import annotations

from html import escape
from typing import Any

BOX_W, BOX_H, GAP_X, GAP_Y = 190, 74, 60, 22
COLOURS = {"done": "#d8f0d8", "reused": "#dde8f8", "running": "#fff2c0", "failed": "#f8d0d0",
           "skipped": "#eeeeee", "pending": "#ffffff", "interrupted": "#f8e0c0", "base": "#f0f0f0"}


def _depths(stages: list[dict[str, Any]]) -> dict[str, int]:
    depth = {"base": 0}
    for stage in stages:  # chain order: inputs come first
        depth[stage["name"]] = 1 + max((depth.get(i, 0) for i in stage.get("inputs") or ["base"]), default=0)
    return depth


def _memory(metrics: dict[str, Any]) -> str:
    peak, planned = metrics.get("peak_memory_mb"), metrics.get("planned_memory_mb")
    if peak is None:
        return ""
    return f"peak {peak:.0f} / plan {planned:.0f} MB" if planned else f"peak {peak:.0f} MB"


def svg(stages: list[dict[str, Any]]) -> str:
    depth = _depths(stages)
    columns: dict[int, list[str]] = {}
    for name in depth:
        columns.setdefault(depth[name], []).append(name)
    where = {name: (d * (BOX_W + GAP_X) + 10, row * (BOX_H + GAP_Y) + 10)
             for d, names in columns.items() for row, name in enumerate(names)}
    width = (max(columns) + 1) * (BOX_W + GAP_X) + 20
    height = max(len(n) for n in columns.values()) * (BOX_H + GAP_Y) + 20
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="chain" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}">',
             '<defs><marker id="arrow" markerWidth="8" markerHeight="8" refX="8" refY="4" orient="auto">'
             '<path d="M0,0 L8,4 L0,8 z" fill="#666"/></marker></defs>']
    for stage in stages:
        x, y = where[stage["name"]]
        for source in stage.get("inputs") or ["base"]:
            if source in where:
                sx, sy = where[source]
                parts.append(f'<line x1="{sx + BOX_W}" y1="{sy + BOX_H / 2}" x2="{x}" y2="{y + BOX_H / 2}" '
                             f'stroke="#666" marker-end="url(#arrow)"/>')
    nodes = [{"name": "base", "kind": "model", "status": "base", "metrics": {}}] + stages
    for stage in nodes:
        x, y = where[stage["name"]]
        status = stage["status"]
        seconds = stage.get("seconds")
        lines = [f'{stage["kind"]} · {status}' + (f" · {seconds:.1f}s" if seconds is not None else ""),
                 _memory(stage.get("metrics") or {})]
        parts.append(f'<g class="stage" data-stage="{escape(stage["name"])}" data-status="{escape(status)}">'
                     f'<rect x="{x}" y="{y}" width="{BOX_W}" height="{BOX_H}" rx="6" fill="{COLOURS.get(status, "#fff")}"'
                     f' stroke="#444"/><text x="{x + 8}" y="{y + 20}" font-weight="bold">{escape(stage["name"])}</text>'
                     + "".join(f'<text x="{x + 8}" y="{y + 40 + 18 * i}" font-size="12">{escape(line)}</text>'
                               for i, line in enumerate(lines) if line) + "</g>")
    parts.append("</svg>")
    return "".join(parts)
