"""Verifiable rewards for RL stages (GRPO): built-ins, and user functions by dotted path.

A stage config lists rewards as names or mappings:

    rewards: [correctness, format]                                       # weight 1 each
    rewards:
      - {name: correctness, weight: 1.0}
      - {name: length, weight: 0.1, args: {limit: 48}}                   # args: keyword arguments
      - {name: mypkg.rewards:brevity, weight: 0.5}                       # or mypkg.rewards.brevity
      - {stage: reward, weight: 0.5}           # an earlier `reward` stage's model scores each completion

Every reward follows trl's signature: `fn(prompts=..., completions=..., completion_ids=..., **columns)`
returning one float (or None: "not applicable") per completion, where `columns` are the prompt
records' other keys (`answer`, `task`, ...). Completions are strings, or a list of messages for
chat prompts. Paths are imported at plan time, so a typo fails before any training. A reward stage's model
is passed to trl as a model (trl scores prompt + completion with it, one float each).
"""
from __future__ import annotations

import importlib
import os
import re
import sys
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from pipeline.answers import extract_answer, json_value
from pipeline.ranges import setting
from pipeline.errors import ConfigError

_MARKER_AT_END = re.compile(r"####\s*-?[\d,]*\.?\d+\s*$")
_MARKER = re.compile(r"####\s*-?[\d,]*\.?\d+")
def completion_text(completion: Any) -> str:
    """A completion as text: chat completions are lists of messages (the assistant's turn)."""
    if isinstance(completion, list):
        return "".join(str(m.get("content") or "") for m in completion if isinstance(m, dict))
    return str(completion)


def _column(values: list | None, n: int) -> list:
    return list(values) if values is not None else [None] * n


# ---------------------------------------------------------------------------------------------
# Built-in rewards

def correctness(completions: list, answer: list | None = None, **_: Any) -> list[float | None]:
    """1.0 when the completion's final number (after '####', else its last number) equals the
    record's answer, 0.0 otherwise; None for records without an answer."""
    rewards: list[float | None] = []
    for completion, expected in zip(completions, _column(answer, len(completions))):
        target = extract_answer(str(expected)) if expected is not None else None
        if target is None:
            rewards.append(None)
        else:
            rewards.append(1.0 if extract_answer(completion_text(completion)) == target else 0.0)
    return rewards


def closeness(completions: list, answer: list | None = None, **_: Any) -> list[float | None]:
    """Partial credit: 1.0 for the right final number, falling linearly with the relative error to 0.0 at
    100% off (0.0 without a number); None for records without a numeric answer. Where a whole group is
    wrong, correctness scores it alike (no advantage, nothing learned); this still ranks near misses first."""
    rewards: list[float | None] = []
    for completion, expected in zip(completions, _column(answer, len(completions))):
        target = _number(extract_answer(str(expected))) if expected is not None else None
        if target is None:
            rewards.append(None)
            continue
        got = _number(extract_answer(completion_text(completion)))
        rewards.append(0.0 if got is None else max(0.0, 1.0 - abs(got - target) / max(abs(target), 1.0)))
    return rewards


def _number(text: str | None) -> float | None:
    try:
        return float(text.replace(",", "")) if text is not None else None
    except ValueError:
        return None


def answer_format(completions: list, **_: Any) -> list[float]:
    """0.5 for a '#### <number>' answer line, 0.5 more when the completion ends right there
    (it stopped instead of rambling on)."""
    rewards = []
    for completion in completions:
        text = completion_text(completion)
        rewards.append(0.5 * bool(_MARKER.search(text)) + 0.5 * bool(_MARKER_AT_END.search(text)))
    return rewards


def json_valid(completions: list, **_: Any) -> list[float]:
    """1.0 when the completion (optionally in a ```json fence) is a JSON object or list, else 0.0."""
    return [0.0 if json_value(completion_text(c)) is None else 1.0 for c in completions]


def length_penalty(completions: list, completion_ids: list | None = None, limit: int = 64, **_: Any) -> list[float]:
    """0 up to `limit` tokens, then falling linearly to -1 at twice the limit (characters when
    called without token ids)."""
    sizes = [len(ids) for ids in completion_ids] if completion_ids is not None else \
        [len(completion_text(c)) for c in completions]
    return [-min(1.0, max(0, n - limit) / limit) for n in sizes]


def tool_use(completions: list, **columns: Any) -> list[float | None]:
    """RL with tools in the loop: the right final answer through the right call (pipeline/training/tool_env.py)."""
    from pipeline.training.tool_env import tool_use as score

    return score(completions, **columns)


BUILTINS: dict[str, Callable[..., list]] = {
    "correctness": correctness,
    "closeness": closeness,
    "format": answer_format,
    "json_valid": json_valid,
    "length": length_penalty,
    "tool_use": tool_use,
}


# ---------------------------------------------------------------------------------------------
# Config entries -> callables

@dataclass(frozen=True)
class RewardSpec:
    name: str | None                            # a built-in name or a dotted path
    weight: float = setting(1.0, "the reward's weight in the sum")
    args: dict[str, Any] = setting(factory=dict, help="keyword arguments passed to the reward function")
    stage: str | None = setting(None, "or an earlier reward stage whose model scores the completions")

    @property
    def label(self) -> str:
        return f"stage {self.stage}" if self.stage else str(self.name)


_ENTRY_KEYS = ("name", "weight", "args", "stage")


def parse(entries: list | None, where: str) -> list[RewardSpec]:
    """Config entries (names or {name, weight, args}) as specs; every path is imported now."""
    if not entries:
        raise ConfigError(f"{where}: no rewards; list at least one, e.g. [correctness, format] "
                          f"(built-ins: {', '.join(BUILTINS)}; or a dotted path module:function)")
    specs = []
    for i, entry in enumerate(entries):
        key = f"{where}[{i}]"
        spec = _spec(entry, key)
        if spec.stage is None:
            resolve(spec.name, key)
        specs.append(spec)
    return specs


def _spec(entry: Any, key: str) -> RewardSpec:
    if isinstance(entry, str):
        return RewardSpec(entry)
    if not isinstance(entry, Mapping):
        raise ConfigError(f"{key}: expected a reward name or {{name, weight, args}}, got {type(entry).__name__}")
    unknown = [k for k in entry if k not in _ENTRY_KEYS]
    if unknown:
        raise ConfigError(f"{key}.{unknown[0]}: unknown key; valid keys: {', '.join(_ENTRY_KEYS)}")
    stage = entry.get("stage")
    if stage is not None and (not isinstance(stage, str) or not stage or "name" in entry or entry.get("args")):
        raise ConfigError(f"{key}.stage: the name of an earlier reward stage, alone with a weight "
                          f"(e.g. {{stage: reward, weight: 0.5}}); got {dict(entry)}")
    if stage is None and (not isinstance(entry.get("name"), str) or not entry["name"]):
        raise ConfigError(f"{key}.name: a value is required (built-ins: {', '.join(BUILTINS)}; "
                          "or a dotted path module:function; or stage: an earlier reward stage)")
    weight = entry.get("weight", 1.0)
    if isinstance(weight, bool) or not isinstance(weight, (int, float)):
        raise ConfigError(f"{key}.weight: must be a number, got {weight!r}")
    args = entry.get("args") or {}
    if not isinstance(args, Mapping):
        raise ConfigError(f"{key}.args: must be a mapping of keyword arguments, got {type(args).__name__}")
    return RewardSpec(entry.get("name"), float(weight), dict(args), stage)


def resolve(name: str, where: str = "reward") -> Callable[..., list]:
    """A built-in by name, or `module:function` / `module.function` imported (cwd importable too)."""
    if name in BUILTINS:
        return BUILTINS[name]
    module_name, _, attr = name.partition(":") if ":" in name else name.rpartition(".")
    if not module_name or not attr:
        raise ConfigError(f"{where}: unknown reward '{name}'; built-ins: {', '.join(BUILTINS)}; "
                          "or a dotted path module:function")
    if os.getcwd() not in sys.path:  # `python main.py` puts the project, not the working folder, on the path
        sys.path.append(os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except Exception as e:  # ImportError, or the user's module failing while it loads
        raise ConfigError(f"{where}: cannot import '{name}' ({type(e).__name__}: {e}); "
                          f"built-ins: {', '.join(BUILTINS)}") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ConfigError(f"{where}: module '{module_name}' has no function '{attr}'")
    return fn


def build(specs: list[RewardSpec], models: Mapping[str, tuple[Any, Any]] | None = None):
    """trl's reward_funcs (functions named after their config entry, for the logs; a reward stage's model),
    their weights, and reward_processing_classes (a reward model's tokenizer, None for a function).
    `models`: each reward stage's (model, tokenizer), by stage name."""
    funcs: list[Any] = []
    tokenizers: list[Any] = []
    for s in specs:
        if s.stage:
            model, tokenizer = (models or {})[s.stage]
            funcs.append(model)
            tokenizers.append(tokenizer)
        else:
            funcs.append(_named(resolve(s.name), _display_name(s.name), s.args))
            tokenizers.append(None)
    return funcs, [s.weight for s in specs], tokenizers if any(t is not None for t in tokenizers) else None


def _display_name(name: str) -> str:
    return name if name in BUILTINS else name.replace(":", ".").rsplit(".", 1)[-1]


def _named(fn: Callable[..., list], name: str, args: dict[str, Any]) -> Callable[..., list]:
    def reward(**columns: Any) -> list:
        return fn(**columns, **args)

    reward.__name__ = name  # trl logs rewards/<name>/mean
    return reward
