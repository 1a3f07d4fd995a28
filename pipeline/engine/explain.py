"""`python main.py +explain=stages.sft` (or a kind, `+explain=dpo`, or `+explain=model`): every key of a
stage's config with the value this command line gives it, the schema's default and the one-line help
declared beside the field (pipeline/ranges.py). Nothing is loaded or run."""
from __future__ import annotations

import dataclasses
import enum
import typing
from typing import Any

from omegaconf import MISSING, DictConfig

from pipeline.engine import registry
from pipeline.engine.typed_config import typed_config
from pipeline.errors import ConfigError
from pipeline.models.config import ModelConfig


def explain(cfg: DictConfig, target: str) -> str:
    stages = cfg.get("stages") or {}
    if target == "model":
        return _table("model", ModelConfig, typed_config(cfg.model, ModelConfig, "model"), "the chain's model")
    name = target.removeprefix("stages.")
    if name in stages:
        spec = registry.get(str(stages[name].kind))
        typed = typed_config(stages[name], spec.config_cls, f"stages.{name}")
        return _table(f"stages.{name}", spec.config_cls, typed, f"kind {spec.kind}: {_first_line(spec.doc)}")
    if name in registry.kinds():
        spec = registry.get(name)
        return _table(f"kind {name}", spec.config_cls, None, _first_line(spec.doc))
    raise ConfigError(f"explain={target}: not a stage of this recipe ({', '.join(f'stages.{s}' for s in stages)}), "
                      f"a stage kind ({', '.join(registry.kinds())}) or model")


def _first_line(doc: str) -> str:
    return (doc or "").strip().splitlines()[0] if doc else ""


def _rows(cls: type, value: Any, prefix: str) -> list[tuple[str, str, str, str]]:
    rows = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        nested = hints.get(f.name)
        current = getattr(value, f.name) if value is not None else None
        if dataclasses.is_dataclass(nested):
            rows.append((key, "", "", f.metadata.get("help", "")))
            rows += _rows(nested, current if dataclasses.is_dataclass(current) else None, f"{key}.")
            continue
        rows.append((key, _show(current) if value is not None else "", _show(_default(f)), f.metadata.get("help", "")))
    return rows


def _default(f: dataclasses.Field) -> Any:
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default


def _show(value: Any) -> str:
    if value is MISSING or value is dataclasses.MISSING:
        return "(required)"
    if isinstance(value, enum.Enum):
        return str(value.value)
    if dataclasses.is_dataclass(value):
        value = {k: v for k, v in dataclasses.asdict(value).items() if v not in (None, {}, [])}
    if isinstance(value, bool):
        return "true" if value else "false"
    return "null" if value is None else str(value)


def _table(title: str, cls: type, typed: Any, doc: str) -> str:
    header = ("key", "value" if typed is not None else "", "default", "help")
    rows = [header] + _rows(cls, typed, "")
    width = [min(max(len(r[c]) for r in rows), cap) for c, cap in enumerate((34, 28, 16))]
    prefix = title if title.startswith(("stages.", "model")) else "stages.<name>"
    lines = [f"{title}: {doc}", f"  every key is set with {prefix}.<key>=VALUE"]
    for row in rows:
        cells = [_cut(row[c], width[c]).ljust(width[c]) for c in range(3)]
        lines.append("  " + "  ".join(cells) + "  " + row[3])
    return "\n".join(line.rstrip() for line in lines)


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."
