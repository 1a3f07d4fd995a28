"""Reasoning-chain features (pipeline/evaluation/scoring/reasoning.py): think blocks, self-verification and backtracking
markers in English and Chinese, whole-word matching, and the averaged summary."""
from __future__ import annotations

import pytest

from pipeline.evaluation.scoring.reasoning import features, find_markers, split_think, summarise

EN = ("<think>The first day makes 120. The second day is 20% more: 120 * 1.2 = 140. Wait, that's wrong: "
      "120 * 1.2 = 144. Let me check: 144 / 120 = 1.2, right. The third day is (120 + 144) / 2 = 132.</think>"
      "The total is 120 + 144 + 132 = 396.")
ZH = ("<think>第一天生产120件，第二天多20%，是120×1.2=140件。不对，应该是144件，重新计算一下。"
      "验证：144÷120=1.2。第三天是(120+144)÷2=132件。检查一下：120+144+132=396。</think>三天共生产396件产品。")


def test_english_chain():
    f = features(EN)
    assert f["has_think"] and f["think_closed"] and f["answer_after_think"]
    assert f["self_verification"] == 1  # "Let me check"
    assert f["backtracking"] == 2       # "Wait", "that's wrong"
    assert f["answer_tokens"] == 7      # The total is 120 144 132 396
    assert f["think_tokens"] > 30 and f["tokens"] == f["think_tokens"] + f["answer_tokens"]
    assert f["length"] == len(EN)


def test_chinese_chain():
    f = features(ZH)
    assert f["has_think"] and f["answer_after_think"]
    assert find_markers(ZH) == {"self_verification": ["验证", "检查一下"], "backtracking": ["不对", "重新"]}
    assert (f["self_verification"], f["backtracking"]) == (2, 2)
    thinking, answer = split_think(ZH)
    assert answer == "三天共生产396件产品。"
    assert f["answer_tokens"] == 9  # 三 天 共 生 产 396 件 产 品: one per CJK character, numbers as one


def test_think_tokens_count_words_and_cjk_characters():
    assert features("<think>先算12加5, then add 3</think>17")["think_tokens"] == 8  # 先 算 12 加 5 then add 3


@pytest.mark.parametrize("text", [
    "I am awaiting the results; they awaited it.",      # wait inside words
    "Factually the numbers are fine.",                  # actually inside a word
    "The unverified checkpoint was checked in.",        # verify / check inside words
    "The matrix is 不对称 and the 验证码 is 1234; 其实现 is simple.",  # Chinese compounds with other meanings
    "We went back to the waiting room.",
])
def test_markers_inside_words_do_not_count(text):
    f = features(text)
    assert (f["self_verification"], f["backtracking"]) == (0, 0), find_markers(text)


@pytest.mark.parametrize("text, verification, backtracking", [
    ("WAIT. Actually, on second thought, let me double-check.", 1, 3),
    ("Hmm, wait—no. I should verify this. Verifying: ok. Verification passed.", 3, 1),
    ("That’s wrong, let me recalculate.", 0, 2),
    ("等等，我算错了。再算一遍，验算无误。", 2, 2),
    ("其实答案是5。核对一下：对。", 1, 1),
])
def test_marker_counts(text, verification, backtracking):
    f = features(text)
    assert (f["self_verification"], f["backtracking"]) == (verification, backtracking), find_markers(text)


def test_think_block_variants():
    implicit = features("the template opened it. 12 + 5 = 17</think>17")  # Qwen3 / R1: <think> was in the prompt
    assert implicit["has_think"] and implicit["think_closed"] and implicit["answer_after_think"]
    assert split_think("the template opened it.</think> 17 ") == ("the template opened it.", "17")

    unclosed = features("<think>still thinking when max_new_tokens ran out")
    assert unclosed["has_think"] and not unclosed["think_closed"] and not unclosed["answer_after_think"]
    assert unclosed["answer_tokens"] == 0

    empty_answer = features("<think>done</think>  ")
    assert empty_answer["has_think"] and not empty_answer["answer_after_think"]

    plain = features("12 + 5 = 17\n#### 17")
    assert not plain["has_think"] and not plain["answer_after_think"] and plain["think_tokens"] == 0
    assert split_think("plain") == (None, "plain")

    two = split_think("<think>a</think>b<think>c</think>d")
    assert two == ("a\nc", "bd")


def test_summarise_averages_with_prefix():
    texts = [EN, ZH, "12 + 5 = 17"]
    s = summarise(texts)
    assert s["reasoning_n"] == 3
    assert s["reasoning_has_think"] == pytest.approx(2 / 3, abs=1e-4)
    assert s["reasoning_answer_after_think"] == pytest.approx(2 / 3, abs=1e-4)
    assert s["reasoning_self_verification"] == pytest.approx(1.0)   # (1 + 2 + 0) / 3
    assert s["reasoning_backtracking"] == pytest.approx(4 / 3, abs=1e-4)
    assert s["reasoning_self_verification_rate"] == pytest.approx(2 / 3, abs=1e-4)
    assert s["reasoning_length"] == pytest.approx(sum(map(len, texts)) / 3, abs=1e-4)
    assert all(k.startswith("reasoning_") for k in s)
    assert summarise([]) == {"reasoning_n": 0}
