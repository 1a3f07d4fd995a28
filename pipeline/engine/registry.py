"""The stage registry: stage kind -> config dataclass + run function.

Every stage module is listed in STAGE_MODULES; importing one registers its kinds through the
@stage decorator. Config dataclasses live at module top level and heavy libraries (torch, trl)
are imported inside `run`, so planning a chain stays fast.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from pipeline.errors import ConfigError

# One place that lists every stage module (order is irrelevant).
STAGE_MODULES = [
    "pipeline.stages.sft",
    "pipeline.stages.qlora",
    "pipeline.stages.eval",
    "pipeline.stages.distill",
    "pipeline.stages.grpo",
    "pipeline.stages.dpo",
    "pipeline.stages.prune",
    "exports.merge",
    "exports.bnb",
    "exports.gptq",
    "exports.gguf",
    "pipeline.stages.serve",
]

# Artifact kinds that stages exchange.
ARTIFACT_KINDS = ("model", "adapter", "eval", "gguf", "serve")


@dataclass(frozen=True)
class StageSpec:
    kind: str
    config_cls: type
    run: Callable[..., Any]
    consumes: frozenset[str]
    produces: str | Callable[[Any], str]  # a kind, or a function of the typed config
    doc: str = ""
    cache: bool = True  # False: runs every time (serving), its record goes to the run folder, not the store

    def output_kind(self, cfg: Any) -> str:
        return self.produces(cfg) if callable(self.produces) else self.produces


_REGISTRY: dict[str, StageSpec] = {}


def stage(kind: str, *, config: type, consumes: Iterable[str], produces, cache: bool = True):
    """Register `run(cfg, inputs, ctx) -> Artifact` as the stage kind `kind`."""

    def wrap(fn):
        _REGISTRY[kind] = StageSpec(kind, config, fn, frozenset(consumes), produces, (fn.__doc__ or "").strip(),
                                    cache)
        return fn

    return wrap


def _load_all() -> None:
    for module in STAGE_MODULES:
        importlib.import_module(module)


def get(kind: str) -> StageSpec:
    _load_all()
    if kind not in _REGISTRY:
        raise ConfigError(f"unknown stage kind '{kind}'; known kinds: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[kind]


def kinds() -> list[str]:
    _load_all()
    return sorted(_REGISTRY)
