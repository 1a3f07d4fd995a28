"""Eval tasks, registered like stage kinds: each file in pipeline/evaluation/tasks/ declares one
task with `@task(...)`, and the eval stage runs whichever a config names. Adding a task is one new
file there (and its test); the eval stage and its config do not change.

A task reads its data through the eval config (`reads`: the dataset fields it uses, so the plan
checks only those and the fingerprint hashes only those), may check its own files at plan time
(`check`), and may build on another task's answers (`needs`: that task runs first, and its outputs
are in `run.shared`).
"""
from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, field
from typing import Any, Callable, Optional


@dataclass
class EvalRun:
    """What a task gets: the eval config, the backend running the evaluated artifact, the stage context,
    the artifact itself, and what earlier tasks of this eval left for later ones."""

    cfg: Any
    backend: Any
    ctx: Any
    source: Any
    shared: dict = field(default_factory=dict)


@dataclass(frozen=True)
class TaskSpec:
    name: str
    run: Callable[[EvalRun], dict]
    order: int                               # run order within an eval (cheap, model-wide measures first)
    headlines: tuple[str, ...] = ()          # metrics the results table and report.md show
    budget: Optional[int] = None             # default max_new_tokens of a task that generates open answers
    reads: tuple[str, ...] = ()              # eval config dataset fields it reads (math, text, instruct)
    needs: tuple[str, ...] = ()              # tasks whose answers it scores
    check: Optional[Callable[[Any, str], None]] = None  # plan time: check(cfg, "stages.NAME")
    doc: str = ""


_TASKS: dict[str, TaskSpec] = {}


def task(name: str, *, order: int, headlines: tuple[str, ...] = (), budget: int | None = None,
         reads: tuple[str, ...] = (), needs: tuple[str, ...] = (), check=None):
    """Register `run(EvalRun) -> metrics` as the eval task `name`."""

    def wrap(fn):
        _TASKS[name] = TaskSpec(name, fn, order, tuple(headlines), budget, tuple(reads), tuple(needs), check,
                                (fn.__doc__ or "").strip())
        return fn

    return wrap


_loaded = False


def _load_all() -> None:
    """Import every built-in task file once (a user's own task module may have registered first)."""
    global _loaded
    from pipeline.evaluation import tasks

    for module in pkgutil.iter_modules(tasks.__path__):
        importlib.import_module(f"{tasks.__name__}.{module.name}")
    _loaded = True


def all_tasks() -> dict[str, TaskSpec]:
    if not _loaded:
        _load_all()
    return dict(sorted(_TASKS.items(), key=lambda item: item[1].order))


def names() -> tuple[str, ...]:
    return tuple(all_tasks())


def default_budgets() -> dict[str, int]:
    return {n: s.budget for n, s in all_tasks().items() if s.budget is not None}


def headlines() -> dict[str, tuple[str, ...]]:
    return {n: s.headlines for n, s in all_tasks().items()}


def with_needs(selected: list[str]) -> list[TaskSpec]:
    """The selected tasks and the ones they build on, in run order."""
    specs = all_tasks()
    wanted: set[str] = set()
    pending = list(selected)
    while pending:
        name = pending.pop()
        if name not in wanted:
            wanted.add(name)
            pending.extend(specs[name].needs)
    return [s for n, s in specs.items() if n in wanted]
