"""Reasoning-chain features of generated text: what one reads in a distilled reasoning model's answer, counted.

Read by eye, one answer raises the questions: does it have a `<think>` block, does it verify itself
("验证", "检查"), does it backtrack ("不对", "重新")? Here the same questions are counted, in English
and Chinese, for every output of an evaluation set, and averaged:

    features("<think>12 + 5 = 17. Wait, 12 + 6 = 18. Let me check: 18 - 6 = 12.</think>18")
    -> {"has_think": True, "think_closed": True, "think_tokens": 13, "answer_tokens": 1,
        "self_verification": 1, "backtracking": 1, "answer_after_think": True, "length": 75, "tokens": 14}
    summarise(texts) -> {"reasoning_n": ..., "reasoning_has_think": ..., ...}

Think blocks:
- `<think>...</think>`: everything between the tags is thinking, the rest is the answer.
- A `</think>` with no `<think>` before it counts as a block that opens at the start of the text: chat
  templates of Qwen3 / DeepSeek-R1 put `<think>` in the prompt, so the generation holds only the close.
- A `<think>` that never closes (generation stopped at max_new_tokens) makes the rest of the text
  thinking: has_think is True, think_closed False, and there is no answer after it.

Lengths are rough, as there is no tokenizer here: `think_tokens` / `answer_tokens` / `tokens` count
words (runs of letters or digits) plus one per CJK character (`textmetrics.tokenize`); `length` is
characters of the whole text.

Markers are counted over the whole text (thinking and answer), case-insensitively, each occurrence
once (a longer phrase wins over a shorter one inside it: "检查一下" is one marker, not two). English
markers match whole words only ("awaiting" is not "wait", "verifying" is "verify" but "unverified"
is not); Chinese has no word boundaries, so the few compounds that mean something else are excluded
explicitly ("不对称" asymmetric, "验证码" verification code, "其实现" its implementation).
"""
from __future__ import annotations

import re
from statistics import fmean

from pipeline.evaluation.scoring.textmetrics import tokenize

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"

# English phrases (whole words; a trailing "*" allows word endings: verif* = verify / verified / verification).
SELF_VERIFICATION_EN = (
    "let me check", "let me double-check", "let me double check", "let me verify", "let me confirm",
    "let's check", "let's verify", "let's double-check", "double-check*", "double check*", "check again",
    "check the answer", "check my work", "sanity check*", "verif*", "to confirm", "confirm that",
    "plug it back", "plugging back", "substitute back", "substituting back",
)
SELF_VERIFICATION_ZH = (
    "验证一下", "检查一下", "验证", "检查", "核对", "核实", "验算", "检验", "确认一下", "再算一遍", "再算一下", "复核", "代入检验",
)
BACKTRACKING_EN = (
    "wait", "actually", "on second thought", "hold on", "hmm, no", "no, that's wrong", "that's wrong",
    "that is wrong", "that's not right", "that is not right", "i made a mistake", "i was wrong", "mistake",
    "let me reconsider", "let me redo", "let me recalculate", "let me start over", "scratch that",
    "correction", "oops", "re-evaluate", "recalculate", "rethink",
)
BACKTRACKING_ZH = (
    "不对", "重新", "等等", "等一下", "错了", "算错", "其实", "更正", "纠正", "改正", "修正", "换个思路",
    "不是这样",
)
# Chinese compounds that contain a marker but mean something else.
_ZH_EXCLUDED_AFTER = {"不对": "称", "验证": "码", "其实": "现"}


def _pattern(english: tuple[str, ...], chinese: tuple[str, ...]) -> re.Pattern:
    parts = []
    for phrase in sorted(english, key=len, reverse=True):
        body = re.escape(phrase.rstrip("*")).replace(r"\ ", r"\s+")
        if phrase.endswith("*"):
            body += r"[a-z]*"
        parts.append(rf"(?<![a-z0-9]){body}(?![a-z0-9])")
    for phrase in sorted(chinese, key=len, reverse=True):
        excluded = _ZH_EXCLUDED_AFTER.get(phrase, "")
        parts.append(re.escape(phrase) + (f"(?![{excluded}])" if excluded else ""))
    return re.compile("|".join(parts), re.IGNORECASE)


_SELF_VERIFICATION = _pattern(SELF_VERIFICATION_EN, SELF_VERIFICATION_ZH)
_BACKTRACKING = _pattern(BACKTRACKING_EN, BACKTRACKING_ZH)
_THINK_BLOCK = re.compile(re.escape(THINK_OPEN) + r"(.*?)" + re.escape(THINK_CLOSE), re.DOTALL)


def split_think(text: str) -> tuple[str | None, str]:
    """(thinking, answer): the text inside think blocks (joined; None when there is none) and the text
    outside them, stripped. See the module doc for implicit and unclosed blocks."""
    thoughts: list[str] = []
    close, open_ = text.find(THINK_CLOSE), text.find(THINK_OPEN)
    if close != -1 and (open_ == -1 or close < open_):  # the template opened the block in the prompt
        thoughts.append(text[:close])
        text = text[close + len(THINK_CLOSE):]
    answer_parts, pos = [], 0
    for m in _THINK_BLOCK.finditer(text):
        answer_parts.append(text[pos:m.start()])
        thoughts.append(m.group(1))
        pos = m.end()
    rest = text[pos:]
    unclosed = rest.find(THINK_OPEN)
    if unclosed != -1:
        answer_parts.append(rest[:unclosed])
        thoughts.append(rest[unclosed + len(THINK_OPEN):])
    else:
        answer_parts.append(rest)
    answer = "".join(answer_parts).replace(THINK_CLOSE, "").strip()
    return ("\n".join(t.strip() for t in thoughts) if thoughts else None), answer


def find_markers(text: str) -> dict[str, list[str]]:
    """The marker phrases found, in order: {"self_verification": [...], "backtracking": [...]}."""
    text = text.replace("\u2019", "'")  # that’s -> that's
    return {"self_verification": _SELF_VERIFICATION.findall(text), "backtracking": _BACKTRACKING.findall(text)}


def features(text: str) -> dict:
    """Reasoning-chain features of one generated text (see the module doc)."""
    thinking, answer = split_think(text)
    open_at = text.rfind(THINK_OPEN)
    think_closed = thinking is not None and (open_at == -1 or text.find(THINK_CLOSE, open_at) != -1)
    markers = find_markers(text)
    return {
        "has_think": thinking is not None,
        "think_closed": think_closed,
        "think_tokens": len(tokenize(thinking)) if thinking else 0,
        "answer_tokens": len(tokenize(answer)),
        "self_verification": len(markers["self_verification"]),
        "backtracking": len(markers["backtracking"]),
        "answer_after_think": think_closed and bool(answer),
        "length": len(text),
        "tokens": len(tokenize(text.replace(THINK_OPEN, " ").replace(THINK_CLOSE, " "))),
    }


def summarise(texts: list[str]) -> dict:
    """Averages over texts, keys prefixed `reasoning_`: booleans become rates (has_think, think_closed,
    answer_after_think), counts become means (think_tokens, ..., length), and the marker counts also get
    a `_rate` (share of texts with at least one marker: the yes/no question asked of one answer)."""
    out: dict = {"reasoning_n": len(texts)}
    if not texts:
        return out
    rows = [features(t) for t in texts]
    for key in rows[0]:
        out[f"reasoning_{key}"] = round(fmean(float(r[key]) for r in rows), 4)
    for key in ("self_verification", "backtracking"):
        out[f"reasoning_{key}_rate"] = round(fmean(float(r[key] > 0) for r in rows), 4)
    return out
