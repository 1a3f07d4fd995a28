"""A config field's default, valid values and one-line help, declared beside the field of the stage,
model, data and hardware dataclasses (one place), and checked for a whole plan at once before any
stage runs:

    learning_rate: float = positive(2e-4, help="peak learning rate")
    max_steps: int = at_least(1, 200, also=(-1,), help="optimizer steps; -1: num_train_epochs instead")
    dropout: float = between(0.0, 0, 1, high_open=True, help="LoRA dropout")
    lr_scheduler_type: str = one_of("cosine", SCHEDULERS, help="transformers' scheduler name")
    packing: bool = setting(False, "pack chats into max_length rows")   # no range: any value of its type

`+explain=stages.sft` prints every field with its default and help (pipeline/engine/explain.py).

`problems(config, "stages.sft")` lists every value outside its range as `key: value; valid: range`.
A range on a list or dict field applies to each of its values; None (an unset optional) is valid.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Iterable

_MISSING = dataclasses.MISSING


@dataclass(frozen=True)
class Range:
    low: float | None = None
    high: float | None = None
    low_open: bool = False        # low itself is not valid
    high_open: bool = False
    also: tuple = ()              # special values outside the range that mean something (-1: unlimited)
    choices: tuple = ()           # an enumeration instead of a numeric range

    def __contains__(self, value: Any) -> bool:
        if value in self.also:
            return True
        if self.choices:
            return value in self.choices
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return False  # nan compares false with every bound, so it would pass them all
        if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
            return False
        return not (self.high is not None and (value > self.high or (self.high_open and value == self.high)))

    def __str__(self) -> str:
        if self.choices:
            return "one of " + ", ".join(str(c) for c in self.choices)
        if self.low is not None and self.high is not None:
            text = f"{'(' if self.low_open else '['}{_num(self.low)}, {_num(self.high)}{')' if self.high_open else ']'}"
        elif self.low is not None:
            text = f"{'>' if self.low_open else '>='} {_num(self.low)}"
        else:
            text = f"{'<' if self.high_open else '<='} {_num(self.high)}"
        return text + "".join(f" or {_num(v)}" for v in self.also)


def _num(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _field(default: Any, rule: Range, default_factory: Any = _MISSING, **metadata: Any):
    if default_factory is not _MISSING:
        return dataclasses.field(default_factory=default_factory, metadata={"range": rule, **metadata})
    return dataclasses.field(default=default, metadata={"range": rule, **metadata})


def setting(default: Any = _MISSING, help: str = "", *, factory: Any = _MISSING, **metadata: Any):
    """A field with no range (booleans, paths, nested blocks): its default and its help."""
    if factory is not _MISSING:
        return dataclasses.field(default_factory=factory, metadata={"help": help, **metadata})
    return dataclasses.field(default=default, metadata={"help": help, **metadata})


def help_of(f: dataclasses.Field) -> str:
    return f.metadata.get("help", "")


def positive(default: Any, **kw: Any):
    """> 0 (rates, temperatures, beta, norms)."""
    return _field(default, Range(low=0, low_open=True, also=kw.pop("also", ())), **kw)


def at_least(low: float, default: Any, **kw: Any):
    return _field(default, Range(low=low, also=kw.pop("also", ())), **kw)


def between(default: Any, low: float, high: float, low_open: bool = False, high_open: bool = False, **kw: Any):
    return _field(default, Range(low=low, high=high, low_open=low_open, high_open=high_open,
                                 also=kw.pop("also", ())), **kw)


def one_of(default: Any, choices: Iterable[Any], **kw: Any):
    return _field(default, Range(choices=tuple(choices)), **kw)


def problems(config: Any, where: str) -> list[str]:
    """Every field of `config` (and of its nested dataclasses) whose value is outside its declared range."""
    found: list[str] = []
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        key = f"{where}.{f.name}"
        if dataclasses.is_dataclass(value):
            found += problems(value, key)
            continue
        rule = f.metadata.get("range")
        if rule is None and isinstance(value, float) and not math.isfinite(value):
            found.append(f"{key}: {value!r}; valid: a finite number")
        if rule is None or value is None:
            continue
        values = value.items() if isinstance(value, dict) else (
            ((str(i), v) for i, v in enumerate(value)) if isinstance(value, (list, tuple)) else [(None, value)])
        for sub, item in values:
            if item is not None and _plain(item) not in rule:
                found.append(f"{key}{'.' + sub if sub is not None else ''}: {item!r}; valid: {rule}")
    return found


def _plain(value: Any) -> Any:
    """An enum member as its value, so choices can list plain strings."""
    return getattr(value, "value", value)
