"""LLM-as-judge over any OpenAI-compatible endpoint: single-answer grading (1-10) and pairwise
comparison with the order swapped.

Where the endpoint is and which key it takes come from the environment at run time (the variables
named by `base_url_env` and `api_key_env`); a literal `base_url` is allowed for a loopback server
a chain starts itself. Neither the URL read from the environment nor the key is logged, stored in
a result or written to its jsonl: error messages are scrubbed of both.

Grading follows the seed lab's rubric (accuracy, completeness, clarity, helpfulness; 1-10) but
not its fallback: a verdict without a valid `评分：X/10` / `Rating: X/10` line is counted as
unparsable, never given an invented score. Every request that does not produce a completion
(connection refused, timeout, HTTP error, malformed body) is counted in `n_failed`; none raises.

    cfg = JudgeConfig()                      # export TUNECHAIN_JUDGE_URL=https://host/v1 (and the key)
    result = grade(cfg, [{"question": "...", "answer": "...", "reference": "..."}])
    result.mean_score, result.n_unparsable, result.n_failed
    result.write_jsonl(run_dir / "judge.jsonl")
"""
from __future__ import annotations

import json
import logging
import os
import re
import time
import unicodedata
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

from pipeline.errors import ConfigError

LANGUAGES = ("auto", "zh", "en")
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
REDACTED = "<redacted>"

# A rating line: the label, a colon (ASCII or full-width), a short value, "/10". The value is
# checked separately so that "评分：11/10", "Rating: 7.5/10" or an echoed "评分：X/10" are
# recognised as the verdict line and rejected, rather than skipped in favour of an earlier one.
_RATING = re.compile(r"(?:评分|\brating)[ \t*_]*[:：][ \t*_]*([^\n/]{0,16}?)[ \t*_]*/[ \t]*10(?![0-9])",
                     re.IGNORECASE)
_INTEGER = re.compile(r"[0-9]{1,2}")
# A pairwise verdict: [[A]] (first assistant better), [[B]] (second) or [[C]] (tie).
_PICK = re.compile(r"\[\[[ \t]*([^\[\]\n]{0,8}?)[ \t]*\]\]")
PICKS = ("A", "B", "C")


class JudgeConfigError(ConfigError, ValueError):
    """The judge cannot run as configured (a ConfigError for the CLI, a ValueError for callers)."""


@dataclass
class JudgeConfig:
    base_url_env: str = "TUNECHAIN_JUDGE_URL"                  # the variable holding the base URL (…/v1)
    api_key_env: Optional[str] = "TUNECHAIN_JUDGE_API_KEY"     # the variable holding the key (unset: no key)
    base_url: Optional[str] = None     # a literal URL (e.g. a loopback server the chain started) wins over the env
    model: str = "judge"
    timeout_s: float = 30.0            # per request; a slower answer counts as failed
    max_retries: int = 1               # the openai client's own retries (connection errors, 408/429/5xx)
    concurrency: int = 4               # requests in flight at once
    temperature: float = 0.0
    max_tokens: int = 256              # the verdict's length
    language: str = "auto"             # zh | en rubric; auto: zh when the question contains CJK characters


def check_config(cfg: JudgeConfig, where: str) -> None:
    """Plan-time check: the endpoint is known and the settings are in range (ConfigError otherwise)."""
    if not cfg.base_url_env or not ENV_NAME.match(cfg.base_url_env):
        raise JudgeConfigError(f"{where}.base_url_env: '{cfg.base_url_env}' is not an environment variable name; "
                               "it names the variable that holds the judge's base URL (e.g. TUNECHAIN_JUDGE_URL)")
    if cfg.api_key_env is not None and not ENV_NAME.match(cfg.api_key_env):
        raise JudgeConfigError(f"{where}.api_key_env: '{cfg.api_key_env}' is not an environment variable name; it "
                               "names the variable that holds the key (e.g. TUNECHAIN_JUDGE_API_KEY), never the key")
    if cfg.base_url is not None and not _is_http(cfg.base_url):
        raise JudgeConfigError(f"{where}.base_url: '{cfg.base_url}' is not an http(s) URL; give the OpenAI-compatible "
                               "base URL (e.g. http://127.0.0.1:8000/v1) or null to read ${cfg.base_url_env}")
    if not cfg.base_url and not os.environ.get(cfg.base_url_env):
        raise JudgeConfigError(f"{where}.base_url_env: ${cfg.base_url_env} is unset and {where}.base_url is null; "
                               f"export {cfg.base_url_env} with the judge's OpenAI-compatible base URL (…/v1)")
    if cfg.language not in LANGUAGES:
        raise JudgeConfigError(f"{where}.language: '{cfg.language}' is not a rubric language; valid: "
                               f"{', '.join(LANGUAGES)}")
    for key, value, low in (("timeout_s", cfg.timeout_s, 0), ("max_tokens", cfg.max_tokens, 0),
                            ("concurrency", cfg.concurrency, 0), ("max_retries", cfg.max_retries, -1)):
        if value <= low:
            raise JudgeConfigError(f"{where}.{key}: {value} must be {'>= 0' if low < 0 else '> 0'}")
    if cfg.temperature < 0:
        raise JudgeConfigError(f"{where}.temperature: {cfg.temperature} must be >= 0")
    if not cfg.model:
        raise JudgeConfigError(f"{where}.model: empty; give the model name the endpoint serves")


def _is_http(url: str) -> bool:
    return url.startswith(("http://", "https://")) and len(url) > len("https://")


def _endpoint(cfg: JudgeConfig) -> tuple[str, Optional[str]]:
    """(base URL, key) read now; a missing URL is a JudgeConfigError (also a ValueError)."""
    check_config(cfg, "judge")
    url = cfg.base_url or os.environ[cfg.base_url_env]
    if not _is_http(url):  # never echo a URL read from the environment
        raise JudgeConfigError(f"judge.base_url_env: ${cfg.base_url_env} does not hold an http(s) URL")
    key = (os.environ.get(cfg.api_key_env) or None) if cfg.api_key_env else None
    return url, key


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


def _language(cfg: JudgeConfig, question: str) -> str:
    return detect_language(question) if cfg.language == "auto" else cfg.language


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


# ---------------------------------------------------------------------------------------------- results

class _Records:
    """What both result kinds share: one JSON line per item (texts included), and the whole as a dict."""

    def write_jsonl(self, path: Path, items: Optional[list[dict]] = None) -> Path:
        return _write_jsonl(Path(path), self.records(items))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class JudgeResult(_Records):
    scores: list[Optional[int]]              # per item: 1..10, None when unparsable or failed
    verdicts: list[Optional[str]]            # the judge's raw text (None when the request failed)
    errors: list[Optional[str]]              # why a request failed (scrubbed of the URL and key)
    languages: list[str]
    n: int
    n_parsed: int
    n_unparsable: int
    n_failed: int
    mean_score: Optional[float]              # over parsed verdicts only (None when there are none)
    distribution: dict[int, int]             # score -> count, 1..10
    seconds: float
    model: str = ""

    def summary(self) -> dict[str, Any]:
        """The numbers for a tracker or report (no texts)."""
        out = {k: getattr(self, k) for k in ("n", "n_parsed", "n_unparsable", "n_failed", "mean_score", "seconds")}
        out["distribution"] = {str(k): v for k, v in self.distribution.items()}
        return out

    def records(self, items: Optional[list[dict]] = None) -> list[dict[str, Any]]:
        rows = []
        for i in range(self.n):
            row = {"index": i, "score": self.scores[i], "language": self.languages[i],
                   "status": "failed" if self.errors[i] else ("parsed" if self.scores[i] is not None else "unparsable"),
                   "verdict": self.verdicts[i], "error": self.errors[i]}
            if items is not None:
                row.update({k: items[i].get(k) for k in ("question", "answer", "reference") if k in items[i]})
            rows.append(row)
        return rows



@dataclass
class PairwiseResult(_Records):
    outcomes: list[str]                      # per item: a | b | tie | inconsistent | unparsable | failed
    picks: list[list[Optional[str]]]         # per item: [verdict with a first, verdict with b first] (A/B/C/None)
    verdicts: list[list[Optional[str]]]      # the judge's raw texts, same order
    errors: list[Optional[str]]
    n: int
    n_wins_a: int
    n_wins_b: int
    n_ties: int                              # both orders said [[C]]
    n_inconsistent: int                      # the two orders disagree: counted as a tie
    n_unparsable: int
    n_failed: int
    win_rate_a: Optional[float]              # over decided items (n - n_unparsable - n_failed)
    win_rate_b: Optional[float]
    tie_rate: Optional[float]                # ties + inconsistent
    seconds: float
    model: str = ""

    def summary(self) -> dict[str, Any]:
        keys = ("n", "n_wins_a", "n_wins_b", "n_ties", "n_inconsistent", "n_unparsable", "n_failed", "win_rate_a",
                "win_rate_b", "tie_rate", "seconds")
        return {k: getattr(self, k) for k in keys}

    def records(self, items: Optional[list[dict]] = None) -> list[dict[str, Any]]:
        rows = []
        for i in range(self.n):
            row = {"index": i, "outcome": self.outcomes[i], "pick_a_first": self.picks[i][0],
                   "pick_b_first": self.picks[i][1], "verdict_a_first": self.verdicts[i][0],
                   "verdict_b_first": self.verdicts[i][1], "error": self.errors[i]}
            if items is not None:
                row.update({k: items[i].get(k) for k in ("question", "answer_a", "answer_b", "reference")
                            if k in items[i]})
            rows.append(row)
        return rows



def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path


# ---------------------------------------------------------------------------------------------- calls

@dataclass
class _Reply:
    raw: Optional[str] = None                # the completion's text as received ("" when it had none): parsed
    text: Optional[str] = None               # the same, scrubbed of the URL and key: kept in the result
    error: Optional[str] = None              # set when no completion came back (scrubbed)


@dataclass
class _Caller:
    """One openai client shared by the pool's threads; every outcome is a _Reply, never an exception."""
    cfg: JudgeConfig
    client: Any
    secrets: list[str] = field(default_factory=list)

    def __call__(self, prompt: str) -> _Reply:
        try:
            reply = self.client.chat.completions.create(
                model=self.cfg.model, messages=[{"role": "user", "content": prompt}],
                temperature=self.cfg.temperature, max_tokens=self.cfg.max_tokens)
            choices = getattr(reply, "choices", None)
            if not choices:
                return _Reply(error="malformed response: no choices")
            content = choices[0].message.content
            if content is not None and not isinstance(content, str):
                return _Reply(error=f"malformed response: content is {type(content).__name__}")
            return _Reply(raw=content or "", text=self._scrub(content or ""))
        except Exception as e:  # the endpoint's boundary: down, slow, HTTP errors, bodies that are not completions
            return _Reply(error=self._scrub(f"{type(e).__name__}: {str(e)[:300]}"))

    def _scrub(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, REDACTED)
        return text


def _caller(cfg: JudgeConfig) -> _Caller:
    url, key = _endpoint(cfg)
    try:
        import openai
    except ImportError:
        raise JudgeConfigError("the judge needs the openai client: pip install -e '.[gguf]' (or pip install openai)") \
            from None
    for name in ("httpx", "httpx2", "openai"):  # their INFO/DEBUG lines name the URL of every request
        logger = logging.getLogger(name)
        if logger.getEffectiveLevel() < logging.WARNING:
            logger.setLevel(logging.WARNING)
    client = openai.OpenAI(base_url=url, api_key=key or "none", timeout=cfg.timeout_s, max_retries=cfg.max_retries)
    secrets = [key, url, url.rstrip("/")]
    if not cfg.base_url:  # a URL from the environment is private down to its host
        secrets.append(urllib.parse.urlsplit(url).netloc)
    return _Caller(cfg, client, sorted({s for s in secrets if s}, key=len, reverse=True))


def _run(cfg: JudgeConfig, call: _Caller, prompts: list[str]) -> list[_Reply]:
    if not prompts:
        return []
    with ThreadPoolExecutor(max_workers=min(cfg.concurrency, len(prompts)), thread_name_prefix="judge") as pool:
        return list(pool.map(call, prompts))


def _text(item: Any, index: int, key: str, required: bool = True) -> Optional[str]:
    if not isinstance(item, dict):
        raise ValueError(f"judge item {index}: expected a dict, got {type(item).__name__}")
    value = item.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str):
        raise ValueError(f"judge item {index}: '{key}' must be a string, got "
                         f"{'nothing' if value is None else type(value).__name__}")
    return value


def grade(cfg: JudgeConfig, items: list[dict]) -> JudgeResult:
    """Score each {question, answer, reference?} from 1 to 10; unparsable and failed verdicts are counted."""
    prompts, languages = [], []
    for i, item in enumerate(items):
        question, answer = _text(item, i, "question"), _text(item, i, "answer")
        reference = _text(item, i, "reference", required=False)
        language = _language(cfg, question)
        languages.append(language)
        prompts.append(grade_prompt(question, answer, reference, language))
    call = _caller(cfg)
    started = time.time()
    replies = _run(cfg, call, prompts)
    seconds = round(time.time() - started, 3)

    scores = [None if r.error else parse_score(r.raw) for r in replies]
    parsed = [s for s in scores if s is not None]
    n_failed = sum(1 for r in replies if r.error)
    distribution = {k: 0 for k in range(1, 11)}
    for s in parsed:
        distribution[s] += 1
    return JudgeResult(scores=scores, verdicts=[r.text for r in replies], errors=[r.error for r in replies],
                       languages=languages, n=len(items), n_parsed=len(parsed),
                       n_unparsable=len(items) - len(parsed) - n_failed, n_failed=n_failed,
                       mean_score=round(sum(parsed) / len(parsed), 4) if parsed else None,
                       distribution=distribution, seconds=seconds, model=cfg.model)


def _outcome(first: _Reply, second: _Reply) -> tuple[str, list[Optional[str]]]:
    """Combine the two orders. `first` showed (a, b), `second` (b, a): its A means b."""
    picks = [None if first.error else parse_preference(first.raw),
             None if second.error else parse_preference(second.raw)]
    if first.error or second.error:
        return "failed", picks
    if None in picks:
        return "unparsable", picks
    as_a = {"A": "a", "B": "b", "C": "tie"}[picks[0]]
    as_b = {"A": "b", "B": "a", "C": "tie"}[picks[1]]
    return (as_a if as_a == as_b else "inconsistent"), picks


def pairwise(cfg: JudgeConfig, items: list[dict]) -> PairwiseResult:
    """Compare answer_a with answer_b for each {question, answer_a, answer_b, reference?}, asking twice
    with the order swapped: a preference held in both orders is a win, a disagreement a tie."""
    prompts = []
    for i, item in enumerate(items):
        question, a, b = (_text(item, i, k) for k in ("question", "answer_a", "answer_b"))
        reference = _text(item, i, "reference", required=False)
        language = _language(cfg, question)
        prompts += [pairwise_prompt(question, a, b, reference, language),
                    pairwise_prompt(question, b, a, reference, language)]
    call = _caller(cfg)
    started = time.time()
    replies = _run(cfg, call, prompts)
    seconds = round(time.time() - started, 3)

    outcomes, picks, verdicts, errors = [], [], [], []
    for i in range(len(items)):
        first, second = replies[2 * i], replies[2 * i + 1]
        outcome, pair = _outcome(first, second)
        outcomes.append(outcome)
        picks.append(pair)
        verdicts.append([first.text, second.text])
        errors.append("; ".join(e for e in (first.error, second.error) if e) or None)
    count = {k: outcomes.count(k) for k in ("a", "b", "tie", "inconsistent", "unparsable", "failed")}
    decided = count["a"] + count["b"] + count["tie"] + count["inconsistent"]

    def rate(k: int) -> Optional[float]:
        return round(k / decided, 4) if decided else None

    return PairwiseResult(outcomes=outcomes, picks=picks, verdicts=verdicts, errors=errors, n=len(items),
                          n_wins_a=count["a"], n_wins_b=count["b"], n_ties=count["tie"],
                          n_inconsistent=count["inconsistent"], n_unparsable=count["unparsable"],
                          n_failed=count["failed"], win_rate_a=rate(count["a"]), win_rate_b=rate(count["b"]),
                          tie_rate=rate(count["tie"] + count["inconsistent"]), seconds=seconds, model=cfg.model)
