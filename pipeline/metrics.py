"""Scoring helpers shared by evaluation stages: answer extraction and perplexity."""
from __future__ import annotations

import math
import re

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")
_MARKER = re.compile(r"####\s*(-?[\d,]*\.?\d+)")


def normalize_number(text: str) -> str | None:
    """'1,234.0' -> '1234'; None when it is not a number."""
    cleaned = text.replace(",", "").replace("$", "").strip().rstrip(".")
    try:
        value = float(cleaned)
    except ValueError:
        return None
    return str(int(value)) if value.is_integer() else repr(value)


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
