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
_FRACTION = re.compile(r"\\[dt]?frac\{(-?\d+)\}\{(-?\d+)\}")
_STATED = re.compile(r"(?:answer is|answer:)\s*\**\s*\$?\s*(-?\d[\d,]*(?:\.\d+)?)", re.IGNORECASE)


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
    """The final number of an answer, read as a person would: thinking (`<think>...</think>`) is not the
    answer; then the last `\\boxed{...}`, else the number after the last '####' (GSM8K), else after the last
    "answer is" / "Answer:", else the last number in the text."""
    if "</think>" in output:
        output = output.rsplit("</think>", 1)[1]
    elif "<think>" in output:
        return None  # cut while thinking: no answer yet
    output = output.replace("{,}", ",").replace("\\!", "").replace("\\,", "")  # LaTeX digit grouping
    for found in (_boxed(output), _last(_MARKER, output), _last(_STATED, output)):
        if found is not None:
            fraction = _FRACTION.search(found)
            if fraction and int(fraction.group(2)) != 0:
                return normalize_number(str(Decimal(fraction.group(1)) / Decimal(fraction.group(2))))
            numbers = _NUMBER.findall(found)
            if numbers:
                return normalize_number(numbers[-1])
    for candidate in reversed(_NUMBER.findall(output)):
        number = normalize_number(candidate)
        if number is not None:
            return number
    return None


def _last(pattern: re.Pattern, text: str) -> str | None:
    found = pattern.findall(text)
    return found[-1] if found else None


def _boxed(text: str) -> str | None:
    """The content of the last \\boxed{...}, nested braces included."""
    start = text.rfind("\\boxed{")
    if start == -1:
        return None
    depth, begin = 0, start + len("\\boxed{")
    for i in range(begin - 1, len(text)):
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        if depth == 0:
            return text[begin:i]
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
