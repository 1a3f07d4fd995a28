"""LLM-as-judge over any OpenAI-compatible endpoint: single-answer grading (1-10) and pairwise
comparison with the order swapped.

Where the endpoint is and which key it takes come from the environment at run time (the variables
named by `base_url_env` and `api_key_env`); a literal `base_url` is allowed for a loopback server
a chain starts itself. Neither the URL read from the environment nor the key is logged, stored in
a result or written to its jsonl: error messages are scrubbed of both.

Grading follows a rubric (accuracy, completeness, clarity, helpfulness; 1-10) with no fallback
score: a verdict without a valid `评分：X/10` / `Rating: X/10` line is counted as
unparsable, never given an invented score. Every request that does not produce a completion
(connection refused, timeout, HTTP error, malformed body) is counted in `n_failed`; none raises.

    cfg = JudgeConfig()                      # export TUNECHAIN_JUDGE_URL=https://host/v1 (and the key)
    result = grade(cfg, [{"question": "...", "answer": "...", "reference": "..."}])
    result.mean_score, result.n_unparsable, result.n_failed
    result.write_jsonl(run_dir / "judge.jsonl")
"""
from __future__ import annotations

import logging
import os
import re
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Optional

from pipeline.errors import ConfigError
from pipeline.evaluation.scoring.judge_results import JudgeResult, PairwiseResult
from pipeline.evaluation.scoring.judge_verdicts import (
    detect_language,
    grade_prompt,
    pairwise_prompt,
    parse_preference,
    parse_score,
)
from pipeline.ranges import at_least, positive, setting
from pipeline.redaction import REDACTED

LANGUAGES = ("auto", "zh", "en")
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class JudgeConfigError(ConfigError, ValueError):
    """The judge cannot run as configured (a ConfigError for the CLI, a ValueError for callers)."""


@dataclass
class JudgeConfig:
    base_url_env: str = setting("TUNECHAIN_JUDGE_URL", "the variable holding the base URL (…/v1)")
    api_key_env: Optional[str] = setting("TUNECHAIN_JUDGE_API_KEY", "the variable holding the key (unset: no key)")
    base_url: Optional[str] = setting(None,
                                      "a literal URL (e.g. a loopback server the chain started) wins over the env")
    model: str = setting("judge", "the model name sent to the judge's API")
    timeout_s: float = positive(30.0, help="per request; a slower answer counts as failed")
    max_retries: int = at_least(0, 1, help="the openai client's own retries (connection errors, 408/429/5xx)")
    concurrency: int = at_least(1, 4, help="requests in flight at once")
    temperature: float = at_least(0, 0.0, help="the judge's sampling temperature (0: greedy)")
    max_tokens: int = at_least(1, 256, help="the verdict's length")
    language: str = setting("auto", "zh | en rubric; auto: zh when the question contains CJK characters")


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


def _language(cfg: JudgeConfig, question: str) -> str:
    return detect_language(question) if cfg.language == "auto" else cfg.language


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
