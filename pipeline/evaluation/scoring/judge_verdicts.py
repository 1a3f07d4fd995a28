"""The judge's prompts (a rubric of accuracy, completeness, clarity and helpfulness, Chinese and English) and how its verdicts are read:
a `评分：X/10` / `Rating: X/10` line for grades, `[[A]]` / `[[B]]` / `[[C]]` for pairwise picks."""
from __future__ import annotations

import re
import unicodedata
from typing import Optional

CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")

# A rating line: the label, a colon (ASCII or full-width), a short value, "/10". The value is
# checked separately so that "评分：11/10", "Rating: 7.5/10" or an echoed "评分：X/10" are
# recognised as the verdict line and rejected, rather than skipped in favour of an earlier one.
_RATING = re.compile(r"(?:评分|\brating)[ \t*_]*[:：][ \t*_]*([^\n/]{0,16}?)[ \t*_]*/[ \t]*10(?![0-9])",
                     re.IGNORECASE)
_INTEGER = re.compile(r"[0-9]{1,2}")
# A pairwise verdict: [[A]] (first assistant better), [[B]] (second) or [[C]] (tie).
_PICK = re.compile(r"\[\[[ \t]*([^\[\]\n]{0,8}?)[ \t]*\]\]")
PICKS = ("A", "B", "C")


# ---------------------------------------------------------------------------------------------- parsing

def parse_score(text: Optional[str]) -> Optional[int]:
    """The rating of the last `评分：X/10` / `Rating: X/10` line: an integer 1..10, else None.

    Policy: the last rating line is the verdict; its value must be a bare integer from 1 to 10
    (markdown emphasis and full-width forms are tolerated). "7.5/10", "11/10", "0/10", "X/10",
    "8" without "/10", or no rating line at all: None (unparsable, never a default score).
    """
    if not text:
        return None
    matches = _RATING.findall(unicodedata.normalize("NFKC", text))
    if not matches:
        return None
    value = matches[-1].strip(" \t*_")
    if not _INTEGER.fullmatch(value):
        return None
    score = int(value)
    return score if 1 <= score <= 10 else None


def parse_preference(text: Optional[str]) -> Optional[str]:
    """The last `[[A]]` / `[[B]]` / `[[C]]` of a pairwise verdict ("A", "B", "C"), else None."""
    if not text:
        return None
    matches = _PICK.findall(unicodedata.normalize("NFKC", text))
    if not matches:
        return None
    pick = matches[-1].strip()
    return pick if pick in PICKS else None


def detect_language(text: str) -> str:
    return "zh" if CJK.search(text or "") else "en"


# ---------------------------------------------------------------------------------------------- prompts

_GRADE_ZH = """你是一名公正、严格的评审。请评价下面这位 AI 助手对用户问题的回答，按以下四项标准综合给出 1 到 10 的整数分：
- 准确性：内容是否正确，有无事实、计算或推理错误；
- 完整性：是否回答了问题的全部要求；
- 清晰度：表达是否清楚、有条理、符合要求的格式；
- 有用性：是否真正帮助了提问者。
1-3 分表示错误或无用，4-6 分表示部分正确或有明显缺陷，7-8 分表示正确且较好，9-10 分表示准确完整、几乎无可挑剔。不要因为回答更长就给更高分。
{reference}
[用户问题]
{question}

[AI 回答]
{answer}

请先用一两句话说明理由，最后单独一行严格按如下格式给出分数（X 为 1 到 10 的整数）：
评分：X/10"""

_GRADE_EN = """You are an impartial, strict judge. Evaluate the AI assistant's answer to the user's question below and give one integer score from 1 to 10 that weighs four criteria:
- Accuracy: is the content correct, free of factual, arithmetic or reasoning errors?
- Completeness: does it address everything the question asks?
- Clarity: is it clear, well organised and in the requested format?
- Helpfulness: does it actually help the person who asked?
1-3 means wrong or useless, 4-6 partly correct or clearly flawed, 7-8 correct and good, 9-10 accurate, complete and hard to improve. Do not reward length for its own sake.
{reference}
[Question]
{question}

[Answer]
{answer}

Explain your judgement in one or two sentences, then end with one line in exactly this format (X an integer from 1 to 10):
Rating: X/10"""

_REFERENCE = {"zh": "\n[参考答案]（用于判断准确性）\n{reference}\n", "en": "\n[Reference answer] (use it to judge accuracy)\n{reference}\n"}

_PAIR_ZH = """你是一名公正的评审。请比较两位 AI 助手对同一个用户问题的回答，判断哪一个更好：综合考虑准确性、完整性、清晰度和有用性。不要受回答先后顺序、长度或助手名称的影响。
{reference}
[用户问题]
{question}

[助手 A 的回答]
{answer_a}

[助手 B 的回答]
{answer_b}

请先用一两句话说明理由，最后单独一行只给出结论：[[A]] 表示助手 A 更好，[[B]] 表示助手 B 更好，[[C]] 表示两者相当。"""

_PAIR_EN = """You are an impartial judge. Compare two AI assistants' answers to the same user question and decide which is better, weighing accuracy, completeness, clarity and helpfulness. Do not let the order of the answers, their length or the assistants' names influence you.
{reference}
[Question]
{question}

[Assistant A's answer]
{answer_a}

[Assistant B's answer]
{answer_b}

Explain your judgement in one or two sentences, then end with one line holding only the verdict: [[A]] if assistant A is better, [[B]] if assistant B is better, [[C]] for a tie."""


def _reference(language: str, reference: Optional[str]) -> str:
    return _REFERENCE[language].format(reference=reference) if reference else ""


def grade_prompt(question: str, answer: str, reference: Optional[str] = None, language: str = "en") -> str:
    template = _GRADE_ZH if language == "zh" else _GRADE_EN
    return template.format(question=question, answer=answer, reference=_reference(language, reference))


def pairwise_prompt(question: str, answer_a: str, answer_b: str, reference: Optional[str] = None,
                    language: str = "en") -> str:
    template = _PAIR_ZH if language == "zh" else _PAIR_EN
    return template.format(question=question, answer_a=answer_a, answer_b=answer_b,
                           reference=_reference(language, reference))
