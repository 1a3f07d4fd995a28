"""The stage registry: stage kind -> config dataclass + run function.

Every module of the STAGE_PACKAGES is imported once (so a new stage kind is one new file there);
importing one registers its kinds through the @stage decorator. Config dataclasses live at module
top level and heavy libraries (torch, trl) are imported inside `run`, so planning a chain stays fast.
"""
from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from pipeline.artifact import ArtifactKind
from pipeline.engine.contract import StageConfig
from pipeline.errors import ConfigError

# Where stage kinds live (subpackages included): pipeline/stages (train/, eval, serve) and exports (merge, prune,
# bnb, gptq, gguf).
STAGE_PACKAGES = ("pipeline.stages", "exports")

# What a stage's result depends on unless its @stage says otherwise (their versions enter its fingerprint).
DEFAULT_LIBRARIES = ("torch", "transformers")
TRAINING_LIBRARIES = ("torch", "transformers", "peft", "trl", "accelerate")

# Artifact kinds that stages exchange.
ARTIFACT_KINDS = tuple(kind.value for kind in ArtifactKind)


@dataclass(frozen=True)
class StageSpec:
    kind: str
    config_cls: type
    run: Callable[..., Any]
    consumes: frozenset[str]
    produces: str | Callable[[Any], str]  # a kind, or a function of the typed config
    doc: str = ""
    cache: bool = True  # False: runs every time (serving), its record goes to the run folder, not the store
    libraries: tuple[str, ...] = DEFAULT_LIBRARIES  # distributions whose versions enter the fingerprint
    isolated: bool = False  # runs in a child process (native code: a crash fails the stage, not the chain)
    distributed: bool = False  # trains through a transformers Trainer: runs under torchrun when hardware asks for N>1
    variant: bool = False  # makes a compressed variant of its input (bnb, GPTQ, GGUF): the report's variant table
    percent: tuple[str, ...] = ()  # its metrics that are shares (0..1): the report shows %, deltas in points

    def output_kind(self, cfg: Any) -> str:
        return self.produces(cfg) if callable(self.produces) else self.produces


_REGISTRY: dict[str, StageSpec] = {}


def stage(kind: str, *, config: type, consumes: Iterable[str], produces, cache: bool = True,
          libraries: Iterable[str] = DEFAULT_LIBRARIES, isolated: bool = False, distributed: bool = False,
          variant: bool = False, percent: Iterable[str] = ()):
    """Register `run(cfg, inputs, ctx) -> Artifact` as the stage kind `kind`. `config` extends StageConfig
    (pipeline/engine/contract.py: the hooks the planner calls); `libraries` are the distributions (pip
    names) its result depends on; the flags are StageSpec's."""
    if not (isinstance(config, type) and issubclass(config, StageConfig)):
        raise TypeError(f"@stage('{kind}'): config {config!r} must be a dataclass extending "
                        f"pipeline.engine.contract.StageConfig")

    def wrap(fn):
        _REGISTRY[kind] = StageSpec(kind, config, fn, frozenset(consumes), produces, (fn.__doc__ or "").strip(),
                                    cache, tuple(libraries), isolated, distributed, variant, tuple(percent))
        return fn

    return wrap


_loaded = False


def _load_all() -> None:
    global _loaded
    if _loaded:
        return
    for package_name in STAGE_PACKAGES:
        package = importlib.import_module(package_name)
        for module in sorted(m.name for m in pkgutil.walk_packages(package.__path__, f"{package_name}.")):
            importlib.import_module(module)
    _loaded = True


def get(kind: str) -> StageSpec:
    _load_all()
    if kind not in _REGISTRY:
        raise ConfigError(f"unknown stage kind '{kind}'; known kinds: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[kind]


def kinds() -> list[str]:
    _load_all()
    return sorted(_REGISTRY)
