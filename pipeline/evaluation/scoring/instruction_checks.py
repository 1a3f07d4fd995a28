"""Verifiable instruction-following checks: does an output do what its prompt asked, in a way code can tell?

An instruct record carries its check as a spec {type, ...}; `passes(output, spec)` says whether the output
passes, `validate_spec(spec)` (pipeline/data/check_specs.py) says at plan time what is wrong with a spec
(None when it is fine).

    type         keys                                   passes when
    json_valid   -                                      the output is a JSON object or array (a ```json fence is fine)
    json_keys    keys: [str], exact: bool = true        the output is a JSON object whose keys are exactly `keys`
                                                        (exact: false: it has at least these keys)
    word_count   n: int, unit: word|char = word,        the output has n words / characters
                 relation: exactly|at_most|at_least
    list_items   n: int, relation: ... = exactly        the output has n list items (numbered or bulleted lines)
    question     expected: str (optional)               the output is one line ending with '?' or '？'; with
                                                        `expected`, it is that question (ignoring case, spacing,
                                                        punctuation and full/half-width forms)

Counting words and characters (Chinese has no spaces between words, and there is no segmenter here):
- unit "char" counts letters, digits and CJK characters; spaces and punctuation do not count, so
  "鸭子每天在河里游泳。" has 9 characters. Use it for Chinese length instructions ("写一个9个字的句子").
- unit "word" counts runs of letters/digits separated by spaces or punctuation ("don't", "well-known",
  "3.5" are one word each). A run of CJK characters between spaces or punctuation is one word, so
  "数据、模型、预测" has 3 words but an unpunctuated Chinese sentence counts as 1: for Chinese text,
  count characters instead.

Outputs are checked as given (the eval stage strips surrounding whitespace): an answer wrapped in chatter
("Sure! Here it is: ...") fails json_* and question checks, as it would fail a program consuming it.
"""
from __future__ import annotations

import re
import unicodedata
from typing import Callable, Mapping

from pipeline.answers import json_value as _json_value
from pipeline.data.check_specs import QUESTION_MARKS, validate_spec

_WORD = re.compile(r"\d+(?:[.,]\d+)+|[^\W_]+(?:['’-][^\W_]+)*")
_CHAR = re.compile(r"[^\W_]")
# A list item: a bullet (- * + •) or a number/Chinese numeral with its delimiter, then the item's text.
_ITEM = re.compile(r"^(?P<indent>[ \t]*)(?:[-*+•·]\s+|\d{1,3}[.)]\s+|\d{1,3}[、．]\s*|[(（]\d{1,3}[)）]\s*"
                   r"|[一二三四五六七八九十]{1,3}[、．.]\s*)\S")
_QUOTES = "\"'`“”‘’「」『』"


def count_words(text: str) -> int:
    """Runs of letters/digits (a CJK run without spaces or punctuation is one word; see the module doc)."""
    return len(_WORD.findall(text))


def count_chars(text: str) -> int:
    """Letters, digits and CJK characters; spaces and punctuation do not count."""
    return len(_CHAR.findall(text))


def count_list_items(text: str) -> int:
    """Numbered or bulleted lines at the outermost level of the list (nested items do not count)."""
    indents = [len(m.group("indent").expandtabs(4)) for m in map(_ITEM.match, text.splitlines()) if m]
    return indents.count(min(indents)) if indents else 0


def _compare(count: int, spec: Mapping) -> bool:
    n, relation = spec["n"], spec.get("relation", "exactly")
    return count == n if relation == "exactly" else count <= n if relation == "at_most" else count >= n


def _normalize(text: str) -> str:
    """For comparing questions: NFKC (full-width -> ASCII), case-folded, letters/digits only."""
    return " ".join(re.findall(r"[^\W_]+", unicodedata.normalize("NFKC", text).casefold()))


# ---------------------------------------------------------------------------------------------
# The checks: fn(output, spec) -> bool, with spec already validated

def json_valid(output: str, spec: Mapping) -> bool:
    return _json_value(output) is not None


def json_keys(output: str, spec: Mapping) -> bool:
    value = _json_value(output)
    if not isinstance(value, dict):
        return False
    keys = set(spec["keys"])
    return set(value) == keys if spec.get("exact", True) else keys <= set(value)


def word_count(output: str, spec: Mapping) -> bool:
    count = count_chars(output) if spec.get("unit", "word") == "char" else count_words(output)
    return _compare(count, spec)


def list_items(output: str, spec: Mapping) -> bool:
    return _compare(count_list_items(output), spec)


def question(output: str, spec: Mapping) -> bool:
    text = output.strip().strip(_QUOTES).strip()
    if not text.endswith(QUESTION_MARKS) or "\n" in text:
        return False
    expected = spec.get("expected")
    return expected is None or _normalize(text) == _normalize(expected)


CHECKS: dict[str, Callable[[str, Mapping], bool]] = {
    "json_valid": json_valid,
    "json_keys": json_keys,
    "word_count": word_count,
    "list_items": list_items,
    "question": question,
}


def passes(output: str, spec: Mapping) -> bool:
    """Whether `output` passes the check `spec` ({type, ...}); ValueError for an invalid spec (an unknown
    type names the valid ones)."""
    problem = validate_spec(spec)
    if problem:
        raise ValueError(f"check spec: {problem}")
    return CHECKS[spec["type"]](str(output), spec)
