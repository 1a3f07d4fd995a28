"""Eval tasks, registered like stage kinds: each file in pipeline/evaluation/tasks/ declares one
task with `@task(...)`, and the eval stage runs whichever a config names. Adding a task is one new
file there (and its test); the eval stage and its config do not change.

A task reads its data through the eval config (`reads`: the dataset fields it uses, so the plan
checks only those and the fingerprint hashes only those), may check its own files at plan time
(`check`), and may build on another task's answers (`needs`: that task runs first, and its outputs
are in `run.shared`).

A task with settings of its own declares them as a dataclass in its file (`settings=SpeedSettings`,
each field with its range beside it: pipeline/ranges.py) and reads them as `ev.cfg.settings.<task>`.
The eval config's `settings` holds one such dataclass per task (`TaskSettings`, rebuilt here whenever a
task registers, so a user's task joins it): a task's defaults come from its dataclass alone, a
mistyped key fails at plan time naming the key and the valid ones, and every setting is in the
stage's fingerprint. A task also declares which of its metrics read as percentages (`percent`):
the report shows those as % and their deltas in points.
"""
from __future__ import annotations

import dataclasses
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
    settings: Optional[type] = None          # its own settings dataclass: cfg.settings.<name>
    percent: tuple[str, ...] = ()            # metrics that are shares: shown as %, deltas in points
    packages: tuple[str, ...] = ()           # modules it imports beyond the core install (checked at plan time)
    extra: str = ""                          # the project extra that installs them: pip install -e '.[extra]'
    items: tuple[str, ...] = ()              # its per-item records: (file, prompt, answer, read as, verdict) keys


def missing_packages(spec: TaskSpec) -> list[str]:
    import importlib.util

    return [name for name in spec.packages if importlib.util.find_spec(name) is None]


_TASKS: dict[str, TaskSpec] = {}


def task(name: str, *, order: int, headlines: tuple[str, ...] = (), budget: int | None = None,
         reads: tuple[str, ...] = (), needs: tuple[str, ...] = (), check=None, settings: type | None = None,
         percent: tuple[str, ...] = (), packages: tuple[str, ...] = (), extra: str = "",
         items: tuple[str, ...] = ()):
    """Register `run(EvalRun) -> metrics` as the eval task `name`; `settings`: a dataclass of its own
    settings (`ev.cfg.settings.<name>`), `percent`: its metrics that read as percentages, `packages`: the
    modules it needs beyond the core install, which `pip install -e '.[<extra>]'` brings; `items`: the file of
    its per-item records and the keys of each record's prompt, answer, reading and verdict (the report shows a few)."""
    if settings is not None and not dataclasses.is_dataclass(settings):
        raise TypeError(f"eval task '{name}': settings must be a dataclass, not {settings!r}")

    def wrap(fn):
        _TASKS[name] = TaskSpec(name, fn, order, tuple(headlines), budget, tuple(reads), tuple(needs), check,
                                (fn.__doc__ or "").strip(), settings, tuple(percent), tuple(packages), extra,
                                tuple(items))
        _sync_settings()
        return fn

    return wrap


@dataclass
class TaskSettings:
    """One field per task that declares settings, typed by its dataclass and defaulting from it. The
    class stays the same object (the eval config's `settings` field is typed by it) while its fields
    follow the registry: `_sync_settings` rebuilds them in place when a task registers or leaves."""


_settings_key: tuple = ()


def _sync_settings() -> None:
    global _settings_key
    owners = sorted(((s.order, n, s.settings) for n, s in _TASKS.items() if s.settings is not None),
                    key=lambda item: item[:2])
    key = tuple((n, cls) for _, n, cls in owners)
    if key == _settings_key:
        return
    fresh = dataclasses.make_dataclass("TaskSettings", [
        (n, cls, field(default_factory=cls, metadata={"help": f"task {n}'s own settings ({cls.__name__})"}))
        for n, cls in key])
    for attr in ("__dataclass_fields__", "__annotations__", "__init__", "__repr__", "__eq__", "__match_args__"):
        setattr(TaskSettings, attr, getattr(fresh, attr))
    _settings_key = key


def default_settings() -> TaskSettings:
    """Every registered task's settings at their defaults (the eval config's `settings` default)."""
    all_tasks()
    _sync_settings()  # a task popped from the registry (tests) leaves the schema too
    return TaskSettings()


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


def percent_metrics() -> set[str]:
    """Metrics that some task declares as a share (0..1): the report shows them as percentages."""
    return {m for s in all_tasks().values() for m in s.percent}


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
