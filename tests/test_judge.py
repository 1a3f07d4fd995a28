"""The LLM judge: strict verdict parsers, grading and pairwise comparison through the openai client
against a local fake endpoint (good, garbage, slow, erroring answers), a closed port, and one real
end-to-end run with llama.cpp's server judging with the embedded model."""
from __future__ import annotations

import json
import secrets
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable

import pytest

pytest.importorskip("openai")

from conftest import EMBEDDED  # noqa: E402

from pipeline.errors import ConfigError  # noqa: E402
from pipeline.evaluation.scoring import judge_verdicts as judge  # noqa: E402
from pipeline.evaluation.scoring.judge import JudgeConfig, check_config, grade, pairwise  # noqa: E402
from pipeline.evaluation.scoring.judge_verdicts import parse_preference, parse_score  # noqa: E402

URL_ENV, KEY_ENV = "TUNECHAIN_JUDGE_URL", "TUNECHAIN_JUDGE_API_KEY"


# ---------------------------------------------------------------------------------------------- parsers

@pytest.mark.parametrize("text, expected", [
    ("评分：8/10", 8),
    ("评分:8/10", 8),                                    # ASCII colon
    ("理由：回答正确。\n评分： 7 / 10\n评语：清楚", 7),
    ("评分：10/10", 10),
    ("评分：1/10", 1),
    ("评分：０９/10", 9),                                # full-width digits (NFKC)
    ("**评分：9/10**", 9),
    ("Rating: 6/10", 6),
    ("rating: 6/10", 6),
    ("Overall **Rating:** 4/10.", 4),
    ("Rating: [8]/10", None),
    ("Rating: 3/10 at first, but on reflection Rating: 5/10", 5),   # several: the last one
    ("评分：3/10 …… 修正后评分：9/10", 9),
    ("Rating: 2/10\n评分：6/10", 6),                    # either label, the last one
    ("评分：11/10", None),                              # out of range
    ("评分：0/10", None),
    ("Rating: 7.5/10", None),                           # policy: only integers, never rounded
    ("评分：7.5/10", None),
    ("评分：X/10", None),                               # the template echoed
    ("Rating: 8/10 ... Rating: X/10", None),            # the last rating line decides, even when invalid
    ("Rating: 8", None),                                # no /10
    ("Rating: 8/100", None),
    ("评分 8/10", None),                                # no colon
    ("The answer deserves an 8 out of 10.", None),
    ("8/10", None),
    ("", None),
    (None, None),
    ("评分：-3/10", None),
])
def test_parse_score(text, expected):
    assert parse_score(text) == expected


@pytest.mark.parametrize("text, expected", [
    ("A is more accurate. [[A]]", "A"),
    ("[[B]]", "B"),
    ("They are equally good.\n[[C]]", "C"),
    ("At first [[A]], but reconsidering: [[B]]", "B"),
    ("［［A］］", "A"),                                  # full-width brackets (NFKC)
    ("[[ A ]]", "A"),
    ("[[D]]", None),
    ("[[a]]", None),
    ("[[A]] or [[B]]? [[AB]]", None),
    ("[A]", None),
    ("Assistant A is better.", None),
    ("", None),
    (None, None),
])
def test_parse_preference(text, expected):
    assert parse_preference(text) == expected


def test_language_and_prompts():
    assert judge.detect_language("小明有 3 个苹果") == "zh" and judge.detect_language("What is 2+2?") == "en"
    zh = judge.grade_prompt("1+1 等于几？", "2", "2", "zh")
    en = judge.grade_prompt("What is 1+1?", "2", None, "en")
    assert zh.rstrip().endswith("评分：X/10") and "参考答案" in zh and "准确性" in zh and "有用性" in zh
    assert en.rstrip().endswith("Rating: X/10") and "Reference" not in en and "Helpfulness" in en
    assert "[[C]]" in judge.pairwise_prompt("q", "x", "y", None, "en")
    assert parse_score(zh) is None and parse_score(en) is None  # the rubric's own format line is no verdict


def test_config_is_checked_at_plan_time(monkeypatch):
    monkeypatch.delenv(URL_ENV, raising=False)
    with pytest.raises(ConfigError, match=r"stages\.judge\.base_url_env: \$TUNECHAIN_JUDGE_URL is unset"):
        check_config(JudgeConfig(), "stages.judge")
    with pytest.raises(ValueError, match="TUNECHAIN_JUDGE_URL"):  # at run time: a ValueError naming the variable
        grade(JudgeConfig(), [{"question": "q", "answer": "a"}])
    check_config(JudgeConfig(base_url="http://127.0.0.1:9/v1"), "stages.judge")  # a literal URL is enough
    monkeypatch.setenv(URL_ENV, "http://127.0.0.1:9/v1")
    check_config(JudgeConfig(), "stages.judge")
    for bad, match in ((dict(language="fr"), r"stages\.judge\.language"),
                       (dict(concurrency=0), r"stages\.judge\.concurrency"),
                       (dict(timeout_s=0), r"stages\.judge\.timeout_s"),
                       (dict(api_key_env="sk-123"), r"stages\.judge\.api_key_env: .*not an environment variable"),
                       (dict(base_url="127.0.0.1:8000"), r"stages\.judge\.base_url: .*not an http")):
        with pytest.raises(ConfigError, match=match):
            check_config(JudgeConfig(**bad), "stages.judge")
    with pytest.raises(ValueError, match="item 1: 'answer' must be a string"):
        grade(JudgeConfig(), [{"question": "q", "answer": "a"}, {"question": "q"}])


# ---------------------------------------------------------------------------------------------- fake endpoint

class FakeJudgeEndpoint:
    """A stdlib HTTP server on 127.0.0.1 answering POST /v1/chat/completions with canned verdicts.

    It stands in for a remote judge API (a hosted strong model), which tests cannot reach: it is the
    network boundary of pipeline.evaluation.scoring.judge, so the real openai client, its timeouts and retries, and the
    thread pool all run unchanged against it. `reply(prompt)` returns (status, text or raw bytes,
    delay in seconds); every request's Authorization header and body are recorded.
    """

    def __init__(self, reply: Callable[[str], tuple[int, object, float]]):
        self.reply, self.requests, self.lock = reply, [], threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                with outer.lock:
                    outer.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
                prompt = body["messages"][-1]["content"]
                status, content, delay = outer.reply(prompt)
                time.sleep(delay)
                if isinstance(content, bytes):
                    payload = content
                elif status == 200:
                    payload = json.dumps({"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                                          "choices": [{"index": 0, "finish_reason": "stop",
                                                       "message": {"role": "assistant", "content": content}}],
                                          "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}
                                          }).encode()
                else:
                    payload = json.dumps({"error": {"message": str(content), "type": "server_error"}}).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.send_header("retry-after-ms", "10")  # a retry waits 10 ms, not the client's backoff
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout)
                    pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def __enter__(self) -> "FakeJudgeEndpoint":
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


def _canned(prompt: str) -> tuple[int, object, float]:
    """Verdicts by a marker in the question: good-N, @garbage, @slow, @broken (non-JSON), @error (HTTP 500)."""
    for n in range(10, 0, -1):
        if f"good-{n}." in prompt:
            return 200, f"The answer is fine.\n评分：{n}/10" if "中文" in prompt else f"Fine.\nRating: {n}/10", 0
    if "@garbage" in prompt:
        return 200, "lorem ipsum Rating: great", 0
    if "@slow" in prompt:
        return 200, "Rating: 9/10", 1.5
    if "@broken" in prompt:
        return 200, b"<html>not json", 0
    if "@error" in prompt:
        return 500, "internal error", 0
    return 200, "", 0


def test_grade_counts_parsed_unparsable_and_failed(monkeypatch, tmp_path):
    key = f"tc-judge-{secrets.token_hex(12)}"
    monkeypatch.setenv(KEY_ENV, key)
    items = [{"question": "Q good-8.", "answer": "a"}, {"question": "Q good-8.", "answer": "b", "reference": "r"},
             {"question": "中文问题 good-3.", "answer": "答"}, {"question": "Q good-10.", "answer": "c"},
             {"question": "Q @garbage", "answer": "d"}, {"question": "Q empty", "answer": "e"},
             {"question": "Q @slow", "answer": "f"}, {"question": "Q @broken", "answer": "g"},
             {"question": "Q @error", "answer": "h"}]
    with FakeJudgeEndpoint(_canned) as fake:
        monkeypatch.setenv(URL_ENV, fake.url)
        cfg = JudgeConfig(timeout_s=0.5, max_retries=0, model="big-judge")
        started = time.time()
        result = grade(cfg, items)
        elapsed = time.time() - started

    assert result.n == 9 and result.n_parsed == 4 and result.n_unparsable == 2 and result.n_failed == 3
    assert result.n == result.n_parsed + result.n_unparsable + result.n_failed
    assert result.scores == [8, 8, 3, 10, None, None, None, None, None]
    assert result.mean_score == pytest.approx((8 + 8 + 3 + 10) / 4)
    assert result.distribution == {1: 0, 2: 0, 3: 1, 4: 0, 5: 0, 6: 0, 7: 0, 8: 2, 9: 0, 10: 1}
    assert result.languages == ["en", "en", "zh", "en", "en", "en", "en", "en", "en"]
    assert result.verdicts[4] == "lorem ipsum Rating: great" and result.verdicts[6] is None
    assert [e is not None for e in result.errors] == [False] * 6 + [True] * 3
    assert "Timeout" in result.errors[6] and "500" in result.errors[8]
    assert elapsed < 5 and result.seconds > 0  # the slow answer was cut at timeout_s, not waited for
    # the request: the key from the environment as a Bearer token, the rubric in the item's language
    assert len(fake.requests) == 9 and {r["path"] for r in fake.requests} == {"/v1/chat/completions"}
    assert {r["auth"] for r in fake.requests} == {f"Bearer {key}"}
    bodies = {r["body"]["messages"][0]["content"]: r["body"] for r in fake.requests}
    assert all(b["model"] == "big-judge" and b["temperature"] == 0.0 and b["max_tokens"] == 256 for b in bodies.values())
    zh = next(p for p in bodies if "中文问题" in p)
    assert zh.rstrip().endswith("评分：X/10") and "参考答案" not in zh
    assert any("Reference answer" in p and "\nr\n" in p for p in bodies)
    # nothing of the key or the private URL in what a caller keeps
    path = result.write_jsonl(tmp_path / "judge.jsonl", items)
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert [r["status"] for r in rows] == ["parsed"] * 4 + ["unparsable"] * 2 + ["failed"] * 3
    assert rows[2]["question"] == "中文问题 good-3." and rows[2]["verdict"].endswith("评分：3/10")
    for text in (repr(result), json.dumps(result.to_dict(), ensure_ascii=False), json.dumps(result.summary()),
                 path.read_text(encoding="utf-8")):
        assert key not in text and fake.url not in text


def test_retries_follow_max_retries(monkeypatch):
    calls = []

    def flaky(prompt):
        calls.append(prompt)
        return (503, "busy", 0) if len(calls) == 1 else (200, "Rating: 7/10", 0)

    monkeypatch.delenv(KEY_ENV, raising=False)
    with FakeJudgeEndpoint(flaky) as fake:
        result = grade(JudgeConfig(base_url=fake.url, max_retries=1, concurrency=1), [{"question": "q", "answer": "a"}])
        assert fake.requests[0]["auth"] == "Bearer none"  # no key configured: a placeholder, never another variable
    assert len(calls) == 2 and result.scores == [7] and result.n_failed == 0


def test_a_closed_port_fails_every_item_without_raising(monkeypatch):
    with socket.socket() as sock:  # bound, then closed: nothing listens there
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv(URL_ENV, f"http://127.0.0.1:{port}/v1")
    items = [{"question": f"q{i}", "answer": "a"} for i in range(5)]
    result = grade(JudgeConfig(max_retries=0, timeout_s=5), items)
    assert result.n == 5 and result.n_failed == 5 and result.n_parsed == 0 and result.n_unparsable == 0
    assert result.mean_score is None and sum(result.distribution.values()) == 0
    assert all("Connection" in e for e in result.errors) and f"127.0.0.1:{port}" not in repr(result)  # the private URL's host
    pair = pairwise(JudgeConfig(max_retries=0, timeout_s=5), [{"question": "q", "answer_a": "x", "answer_b": "y"}])
    assert pair.n_failed == 1 and pair.win_rate_a is None and pair.tie_rate is None


def test_pairwise_cancels_position_bias(monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)
    items = [{"question": f"Which is better {i}?", "answer_a": f"first-{i}", "answer_b": f"second-{i}"} for i in range(4)]
    with FakeJudgeEndpoint(lambda prompt: (200, "The first one. [[A]]", 0)) as fake:
        result = pairwise(JudgeConfig(base_url=fake.url), items)
        shown = [r["body"]["messages"][0]["content"] for r in fake.requests]
    assert len(shown) == 8  # each pair asked twice, the second time swapped
    for i in range(4):
        orders = [p.index(f"first-{i}") < p.index(f"second-{i}") for p in shown if f"first-{i}" in p]
        assert sorted(orders) == [False, True]
    assert result.outcomes == ["inconsistent"] * 4 and result.n_inconsistent == 4
    assert result.tie_rate == 1.0 and result.win_rate_a == 0.0 and result.win_rate_b == 0.0
    assert result.picks == [["A", "A"]] * 4 and result.n_unparsable == result.n_failed == 0


def test_pairwise_consistent_preferences_and_unparsable(monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)

    def prefers_good(prompt):  # a judge with taste: picks whichever slot holds the GOOD answer
        if "@unsure" in prompt:
            return 200, "hard to say", 0
        if "@same" in prompt:
            return 200, "[[C]]", 0
        first_good = prompt.index("GOOD") < prompt.index("BAD")
        return 200, "[[A]]" if first_good else "[[B]]", 0

    items = [{"question": "q1", "answer_a": "GOOD", "answer_b": "BAD"},
             {"question": "q2", "answer_a": "BAD", "answer_b": "GOOD"},
             {"question": "q3 @same", "answer_a": "GOOD", "answer_b": "BAD"},
             {"question": "q4 @unsure", "answer_a": "GOOD", "answer_b": "BAD"},
             {"question": "问题五", "answer_a": "GOOD", "answer_b": "BAD"}]
    with FakeJudgeEndpoint(prefers_good) as fake:
        result = pairwise(JudgeConfig(base_url=fake.url), items)
        assert any("[[C]] 表示两者相当" in r["body"]["messages"][0]["content"] for r in fake.requests)
    assert result.outcomes == ["a", "b", "tie", "unparsable", "a"]
    assert (result.n_wins_a, result.n_wins_b, result.n_ties, result.n_unparsable) == (2, 1, 1, 1)
    assert result.win_rate_a == 0.5 and result.win_rate_b == 0.25 and result.tie_rate == 0.25
    assert result.summary()["n"] == 5 and result.records(items)[1]["pick_b_first"] == "A"


# ---------------------------------------------------------------------------------------------- real server

def test_llama_cpp_server_as_the_judge(tmp_path, monkeypatch):
    """The embedded model served by llama.cpp is the judge: a real endpoint, a real key, real (mostly
    unparsable) verdicts from a tiny model; every item is accounted for."""
    pytest.importorskip("llama_cpp.server")
    from pipeline.llama_cpp.converter import convert
    from pipeline.backends import serving

    gguf = tmp_path / "j.gguf"
    convert(Path(EMBEDDED), gguf, "f16")  # the converter comes from TUNECHAIN_CACHE
    key = f"tc-judge-{secrets.token_hex(12)}"
    port = serving.free_port("127.0.0.1")
    command = serving.llama_cpp_command(gguf, "127.0.0.1", port, 2048, "judge", 1, [])
    server = serving.start(command, serving.server_env("llama.cpp", key, "127.0.0.1", port), tmp_path / "server.log",
                           "127.0.0.1", port)
    try:
        serving.wait_ready(server, key, 90)
        monkeypatch.setenv(URL_ENV, f"{server.base_url}/v1")
        monkeypatch.setenv(KEY_ENV, key)
        cfg = JudgeConfig(max_tokens=24, timeout_s=120, concurrency=2)
        items = [{"question": "What is 12 plus 7?", "answer": "19", "reference": "19"},
                 {"question": "Name a primary colour.", "answer": "Blue."},
                 {"question": "1+1 等于几？", "answer": "2"}]
        result = grade(cfg, items)
        pair = pairwise(cfg, [{"question": "What is 2 plus 2?", "answer_a": "4", "answer_b": "5"}])
    finally:
        serving.stop(server)
    assert result.n == 3 == result.n_parsed + result.n_unparsable + result.n_failed
    assert result.n_failed == 0, result.errors  # the server answered every request with the right key
    assert all(isinstance(v, str) for v in result.verdicts)
    assert all(s is None or 1 <= s <= 10 for s in result.scores)
    assert pair.n == 1 and pair.n_failed == 0 and pair.outcomes[0] in ("a", "b", "tie", "inconsistent", "unparsable")
    assert key not in repr(result) and key not in repr(pair)
