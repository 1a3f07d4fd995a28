"""The check an instruct record carries ({type, ...}): its types, their keys and valid values.
`validate_spec` says at plan time what is wrong with one (None when it is fine); what each type checks
is pipeline/evaluation/scoring/instruction_checks.py's."""
from __future__ import annotations

from typing import Any, Callable, Mapping

RELATIONS = ("exactly", "at_most", "at_least")
UNITS = ("word", "char")
QUESTION_MARKS = ("?", "？")


def _positive_int(spec: Mapping, key: str) -> str | None:
    value = spec[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        return f"'{key}' must be a positive integer, got {value!r}"
    return None


def _choice(spec: Mapping, key: str, choices: tuple[str, ...]) -> str | None:
    if key in spec and spec[key] not in choices:
        return f"'{key}' must be one of {', '.join(choices)}, got {spec[key]!r}"
    return None


def _keys_problem(spec: Mapping) -> str | None:
    keys = spec["keys"]
    if not isinstance(keys, list) or not keys or not all(isinstance(k, str) for k in keys):
        return f"'keys' must be a non-empty list of strings, got {keys!r}"
    if len(set(keys)) != len(keys):
        return f"'keys' has duplicates: {keys!r}"
    if "exact" in spec and not isinstance(spec["exact"], bool):
        return f"'exact' must be true or false, got {spec['exact']!r}"
    return None


def _expected_problem(spec: Mapping) -> str | None:
    expected = spec.get("expected")
    if expected is not None and (not isinstance(expected, str) or not expected.strip().endswith(QUESTION_MARKS)):
        return f"'expected' must be a question ending with '?' or '？', got {expected!r}"
    return None


# type -> (required keys, optional keys, extra validation)
_SPECS: dict[str, tuple[tuple[str, ...], tuple[str, ...], Callable[[Mapping], str | None]]] = {
    "json_valid": ((), (), lambda spec: None),
    "json_keys": (("keys",), ("exact",), _keys_problem),
    "word_count": (("n",), ("unit", "relation"),
                   lambda spec: _positive_int(spec, "n") or _choice(spec, "unit", UNITS)
                   or _choice(spec, "relation", RELATIONS)),
    "list_items": (("n",), ("relation",),
                   lambda spec: _positive_int(spec, "n") or _choice(spec, "relation", RELATIONS)),
    "question": ((), ("expected",), _expected_problem),
}
CHECK_TYPES = tuple(_SPECS)


def validate_spec(spec: Any) -> str | None:
    """What is wrong with a check spec, or None: unknown type, missing or unknown keys, bad values."""
    if not isinstance(spec, Mapping):
        return f"a check must be a mapping {{type, ...}}, got {type(spec).__name__}"
    kind = spec.get("type")
    if kind not in CHECK_TYPES:
        what = "no 'type'" if kind is None else f"unknown type {kind!r}"
        return f"{what}; valid types: {', '.join(CHECK_TYPES)}"
    required, optional, extra = _SPECS[kind]
    missing = [k for k in required if k not in spec]
    if missing:
        return f"{kind}: missing '{missing[0]}' (keys: {', '.join(required + optional) or 'none'})"
    unknown = [k for k in spec if k != "type" and k not in required + optional]
    if unknown:
        return f"{kind}: unknown key '{unknown[0]}' (keys: {', '.join(required + optional) or 'none'})"
    problem = extra(spec)
    return f"{kind}: {problem}" if problem else None
