"""How answers are read: the one number normaliser (data targets, eval predictions, GRPO rewards,
tool answers all go through `normalize_number`), the final-number extraction, the JSON value of
an answer (instruction checks and the json_valid reward), and perplexity."""
from __future__ import annotations

import json
import math
import re
from decimal import Decimal, InvalidOperation

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")
_FENCE = re.compile(r"^```(?:json)?\s*\n?(.*?)\n?```$", re.DOTALL)
_MARKER = re.compile(r"####\s*(-?[\d,]*\.?\d+)")


def normalize_number(text: str) -> str | None:
    """'1,234.0' -> '1234', '007' -> '7', '2.50' -> '2.5', '$5' -> '5'; None when it is not a number.
    Decimal, not float: 20-digit answers keep every digit."""
    cleaned = text.replace(",", "").replace("$", "").strip().rstrip(".")
    try:
        value = Decimal(cleaned)
    except InvalidOperation:
        return None
    if not value.is_finite():
        return None
    if value == value.to_integral_value():
        return str(int(value))
    return format(value.normalize(), "f")


def extract_answer(output: str) -> str | None:
    """The number after the last '####', else the last number in the output (GSM8K style)."""
    marked = _MARKER.findall(output)
    candidates = marked or _NUMBER.findall(output)
    for candidate in reversed(candidates):
        number = normalize_number(candidate)
        if number is not None:
            return number
    return None


def perplexity(total_nll: float, n_tokens: int) -> float:
    """exp(mean negative log-likelihood per token)."""
    return math.exp(total_nll / n_tokens) if n_tokens else float("nan")


def json_value(text: str):
    """The JSON object or list an answer holds (bare, or in a ```json fence); None if it holds neither."""
    text = text.strip()
    fenced = _FENCE.match(text)
    try:
        value = json.loads(fenced.group(1) if fenced else text)
    except ValueError:
        return None
    return value if isinstance(value, (dict, list)) else None
