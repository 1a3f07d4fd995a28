"""Tool calling and the agent loop (pipeline/evaluation/scoring/tool_agent.py, tool_set.py, tool_calls.py): safe calculator, stand-in tools that agree with
the embedded data, call parsing, the loop with a scripted model, and the scorer against test_tools.jsonl."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.data.datasets import DataError
from pipeline.evaluation.scoring.tool_agent import (
    backend_generate,
    evaluate_tools,
    first_call_matches,
    load_tool_cases,
    normalize_arguments,
    run_episode,
    score_tools,
)
from pipeline.evaluation.scoring.tool_calls import TOOL_CALL_CLOSE, TOOL_CALL_OPEN, parse_tool_calls
from pipeline.evaluation.scoring.tool_set import TOOLS, CalculatorError, calculate, execute_tool

ROOT = Path(__file__).resolve().parent.parent
TEST_TOOLS = ROOT / "embedded" / "data" / "test_tools.jsonl"
SFT_TRAIN = ROOT / "embedded" / "data" / "sft_train.jsonl"


def format_tool_call(name: str, arguments: dict) -> str:
    """The assistant text of one call, as the embedded data writes it."""
    return TOOL_CALL_OPEN + json.dumps({"name": name, "arguments": dict(arguments)}, ensure_ascii=False) + TOOL_CALL_CLOSE


def scripted(replies: list[str], seen: list | None = None):
    """A stand-in for the model: returns the canned replies in order (records what it was shown)."""
    it = iter(replies)

    def generate(messages: list[dict]) -> str:
        if seen is not None:
            seen.append([dict(m) for m in messages])
        return next(it)

    return generate


# ---------------------------------------------------------------------------------------------
# Calculator

@pytest.mark.parametrize("expression, value", [
    ("234 + 918", 1152), ("39 + 64 * 4", 295), ("(15 + 27) * 3 - 40", 86), ("472 - 173", 299),
    ("7 / 2", 3.5), ("6 / 2", 3), ("7 // 2", 3), ("7 % 4", 3), ("2 ** 10", 1024), ("-3 + +5", 2),
    ("3.14159 * 5 ** 2", 78.53975), ("0.1 + 0.2", 0.3), ("12 × 3 ÷ 4", 9), ("2^3", 8), ("１２＋３", 15),
    ("  ( 1 + 2 )\n* 3 ", 9),
])
def test_calculator_is_right(expression, value):
    result = calculate(expression)
    assert result == value
    assert type(result) is type(value)  # integral results are ints: {"result": 3}, not 3.0


@pytest.mark.parametrize("expression", [
    "__import__('os')", "__import__('os').system('echo hacked')", "(1).real", "().__class__.__bases__",
    "open('/etc/passwd')", "x + 1", "'a' * 3", "True + 1", "[1, 2]", "lambda: 1", "1 if 1 else 2",
    "1 < 2", "1 << 8", "2 ** 1000", "9 ** 9 ** 9", "10 ** 99 * 10 ** 99", "1e308 * 10", "(-8) ** 0.5",
    "1 / 0", "5 % 0", "", "1 +", "1" + " + 1" * 100,
])
def test_calculator_rejects_anything_but_arithmetic(expression):
    with pytest.raises(CalculatorError):
        calculate(expression)
    message = json.loads(execute_tool("calculator", {"expression": expression}))
    assert set(message) == {"error"}


def test_calculator_rejects_non_strings():
    with pytest.raises(CalculatorError):
        calculate(12)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# The stand-in tools

def test_tools_give_the_tool_messages_the_embedded_data_trains_on():
    """Every tool turn of sft_train.jsonl is exactly what execute_tool returns for the call before it."""
    checked = set()
    for line in SFT_TRAIN.read_text(encoding="utf-8").splitlines():
        messages = json.loads(line)["messages"]
        for call_turn, tool_turn in zip(messages, messages[1:]):
            if tool_turn["role"] != "tool":
                continue
            calls, blocks = parse_tool_calls(call_turn["content"])
            assert len(calls) == blocks == 1, call_turn
            call = calls[0]
            assert execute_tool(call["name"], call["arguments"]) == tool_turn["content"]
            checked.add(call["name"])
    assert checked == set(TOOLS)


def test_weather_is_a_fixed_table():
    assert json.loads(execute_tool("get_weather", {"city": " madrid "})) == \
        {"temp": 24, "condition": "cloudy", "humidity": 47}
    assert "unknown city" in json.loads(execute_tool("get_weather", {"city": "Atlantis"}))["error"]


def test_knowledge_lookup():
    def ask(query):
        return json.loads(execute_tool("search_knowledge", {"query": query}))["result"]

    assert ask("SFT") == "SFT is supervised fine-tuning on example conversations."
    assert ask("监督微调") == "SFT是在示例对话上的监督微调。"
    assert ask("kv  CACHE").startswith("The KV cache")
    assert ask("Tell me about QLoRA please").startswith("QLoRA trains")  # longest key inside the query
    assert ask("bananas") == "not found"


@pytest.mark.parametrize("name, arguments, problem", [
    ("send_email", {"to": "x"}, "unknown tool"),
    ("calculator", {}, "missing argument 'expression'"),
    ("calculator", {"expression": "1", "precision": 2}, "unexpected argument 'precision'"),
    ("get_weather", ["Paris"], "arguments must be an object"),
])
def test_execute_tool_reports_bad_calls(name, arguments, problem):
    assert problem in json.loads(execute_tool(name, arguments))["error"]


# ---------------------------------------------------------------------------------------------
# Parsing

CALC = {"name": "calculator", "arguments": {"expression": "1 + 2"}}


@pytest.mark.parametrize("text, expected", [
    ('<tool_call>{"name": "calculator", "arguments": {"expression": "1 + 2"}}</tool_call>', CALC),
    ('<tool_call>\n  {"name": "calculator",\n "arguments": {"expression": "1 + 2"}}  \n</tool_call>', CALC),
    ('Sure. <tool_call>{"name": "calculator", "arguments": {"expression": "1 + 2"}}</tool_call> done', CALC),
    ('<tool_call>{"name": "calculator", "arguments": "{\\"expression\\": \\"1 + 2\\"}"}</tool_call>', CALC),
    ('<tool_call>{"name": " calculator ", "arguments": {"expression": "1 + 2"}}</tool_call>', CALC),
    ('<tool_call>{"name": "get_weather", "arguments": {"city": "杭州"}}</tool_call>',
     {"name": "get_weather", "arguments": {"city": "杭州"}}),
    ('<tool_call>{"name": "search_knowledge"}</tool_call>', {"name": "search_knowledge", "arguments": {}}),
    ('<think>maybe <tool_call>{"name": "x", "arguments": {}}</tool_call></think>'
     '<tool_call>{"name": "calculator", "arguments": {"expression": "1 + 2"}}</tool_call>', CALC),
    ('<tool_call>{"name": "calculator", "arguments": {"expression": "1 + 2"}</tool_call>', None),  # bad JSON
    ("<tool_call>calculator(1 + 2)</tool_call>", None),
    ('<tool_call>{"name": "calculator", "arguments": {"expression": "1 + 2"}}', None),  # never closed
    ('<tool_call>{"arguments": {"expression": "1 + 2"}}</tool_call>', None),  # no name
    ('<tool_call>{"name": "calculator", "arguments": ["1 + 2"]}</tool_call>', None),
    ('<tool_call>["calculator"]</tool_call>', None),
    ('{"name": "calculator", "arguments": {"expression": "1 + 2"}}', CALC),  # Llama 3: the bare object
    ('[TOOL_CALLS][{"name": "calculator", "arguments": {"expression": "1 + 2"}}]', CALC),  # Mistral
    ('<|python_tag|>{"name": "calculator", "parameters": {"expression": "1 + 2"}}', CALC),  # Llama 3.1
    ('<|tool_call|>[{"name": "calculator", "arguments": {"expression": "1 + 2"}}]<|/tool_call|>', CALC),  # Phi-4
    ('Sure.\n```json\n{"name": "calculator", "arguments": "{\\"expression\\": \\"1 + 2\\"}"}\n```', CALC),
    ('The result as JSON: {"value": 3, "unit": null}', None),  # JSON that is not a call
    ("The answer is 3.", None),
])
def test_parse_tool_call(text, expected):
    calls, _ = parse_tool_calls(text)
    assert (calls[0] if calls else None) == expected


def test_parse_tool_calls_counts_blocks_and_round_trips():
    text = format_tool_call("get_weather", {"city": "北京"}) + format_tool_call("calculator", {"expression": "2*3"}) \
        + "<tool_call>{oops}</tool_call>"
    assert "北京" in text  # kept readable, as in the data
    calls, blocks = parse_tool_calls(text)
    assert blocks == 3
    assert calls == [{"name": "get_weather", "arguments": {"city": "北京"}},
                     {"name": "calculator", "arguments": {"expression": "2*3"}}]


# ---------------------------------------------------------------------------------------------
# The agent loop

def test_run_episode_executes_the_tool_and_stops_at_the_answer():
    seen: list = []
    start = [{"role": "user", "content": "What is 2 + 3 * 4?"}]
    episode = run_episode(scripted([format_tool_call("calculator", {"expression": "2 + 3 * 4"}),
                                    "<think>the tool says 14</think>2 + 3 * 4 = 14", "never asked"], seen),
                          start, max_turns=3)
    assert episode["turns"] == 2 and episode["error"] is None
    assert episode["final_answer"] == "2 + 3 * 4 = 14"  # think block removed
    assert episode["calls"] == [{"turn": 1, "name": "calculator", "arguments": {"expression": "2 + 3 * 4"},
                                 "result": '{"result": 14}'}]
    assert [m["role"] for m in episode["messages"]] == ["user", "assistant", "tool", "assistant"]
    # the model's second turn saw its call and the tool's result
    assert seen[1][-1] == {"role": "tool", "content": '{"result": 14}'}
    assert start == [{"role": "user", "content": "What is 2 + 3 * 4?"}]  # the caller's list is untouched


def test_run_episode_without_a_call_answers_at_once():
    episode = run_episode(scripted(["Hello!"]), [{"role": "user", "content": "hi"}])
    assert (episode["turns"], episode["calls"], episode["final_answer"], episode["error"]) == (1, [], "Hello!", None)


def test_run_episode_stops_at_max_turns():
    call = format_tool_call("get_weather", {"city": "Oslo"})
    episode = run_episode(scripted([call] * 5), [{"role": "user", "content": "Oslo?"}], max_turns=2)
    assert episode["turns"] == 2 and len(episode["calls"]) == 2
    assert episode["final_answer"] is None and "max_turns=2" in episode["error"]


def test_run_episode_stops_on_an_unparsable_call():
    episode = run_episode(scripted(['<tool_call>{"name": "calculator", </tool_call>', "x"]),
                          [{"role": "user", "content": "1+1?"}])
    assert episode["turns"] == 1 and episode["calls"] == [] and episode["final_answer"] is None
    assert "unparsable tool call" in episode["error"]


def test_run_episode_returns_tool_errors_to_the_model():
    episode = run_episode(scripted([format_tool_call("calculator", {"expression": "__import__('os')"}),
                                    "I cannot compute that."]), [{"role": "user", "content": "?"}])
    assert "error" in json.loads(episode["calls"][0]["result"])
    assert episode["final_answer"] == "I cannot compute that." and episode["error"] is None


def test_backend_generate_renders_the_tool_turn_with_the_embedded_template():
    from transformers import AutoTokenizer

    from pipeline.backends.base import Generation

    class Backend:
        prompts: list = []

        def generate(self, prompts, max_new_tokens):
            self.prompts.extend(prompts)
            return [Generation("It is 14.", [], True) for _ in prompts]

    backend = Backend()
    generate = backend_generate(backend, AutoTokenizer.from_pretrained(ROOT / "embedded" / "model"))
    assert generate([[{"role": "user", "content": "2+3*4?"},
                      {"role": "assistant", "content": format_tool_call("calculator", {"expression": "2+3*4"})},
                      {"role": "tool", "content": '{"result": 14}'}]]) == ["It is 14."]
    assert backend.prompts[0].endswith('<|im_start|>tool\n{"result": 14}<|im_end|>\n<|im_start|>assistant\n')


# ---------------------------------------------------------------------------------------------
# Scoring against the shipped test set

def _oracle(cases: list[dict], tools: list[str] | None = None):
    """A scripted 'model' that writes each case's expected call (or the given tool), then its answer."""
    by_prompt = {c["prompt"]: (c, t) for c, t in zip(cases, tools or [c["tool"] for c in cases])}

    def generate(conversations):
        replies = []
        for conversation in conversations:
            case, tool = by_prompt[conversation[0]["content"]]
            replies.append(format_tool_call(tool, case["arguments"]) if len(conversation) == 1 else case["answer"])
        return replies

    return generate


def test_score_tools_agrees_with_test_tools_jsonl():
    cases = load_tool_cases(TEST_TOOLS)
    assert len(cases) == 40 and {c["tool"] for c in cases} == set(TOOLS)
    metrics, episodes = evaluate_tools(_oracle(cases), cases)
    assert metrics == {"tools_n": 40, "tools_choice_accuracy": 1.0, "tools_argument_accuracy": 1.0,
                       "tools_call_match": 1.0, "tools_answer_accuracy": 1.0, "tools_answer_n": 40,
                       "tools_parse_rate": 1.0, "tools_call_rate": 1.0, "tools_mean_turns": 2.0,
                       "tools_error_rate": 0.0}
    # the tools' results are the ones the expected answers were written from
    for case, episode in zip(cases, episodes):
        result = json.loads(episode["calls"][0]["result"])
        assert "error" not in result
        if case["tool"] == "calculator":
            assert case["answer"].endswith(f"= {result['result']}")
        elif case["tool"] == "get_weather":
            assert f"{result['temp']}" in case["answer"] and f"{result['humidity']}%" in case["answer"]
        else:
            assert result["result"] == case["answer"]


def test_a_wrong_tool_lowers_choice_accuracy():
    cases = load_tool_cases(TEST_TOOLS)
    tools = [c["tool"] for c in cases]
    tools[0] = "get_weather" if tools[0] != "get_weather" else "calculator"
    metrics, _ = evaluate_tools(_oracle(cases, tools), cases)
    assert metrics["tools_choice_accuracy"] == 0.975 and metrics["tools_call_match"] == 0.975
    assert metrics["tools_argument_accuracy"] == 1.0  # the arguments were still the expected ones


def test_score_tools_argument_normalisation_and_answers():
    case = {"prompt": "p", "tool": "calculator", "arguments": {"expression": "234 + 918"}, "answer": "234 + 918 = 1152"}

    def episode(arguments, final):
        return {"calls": [{"name": "calculator", "arguments": arguments, "result": ""}], "final_answer": final,
                "turns": 2, "error": None, "blocks": 1}

    same = score_tools([case], [episode({"expression": " 234  +\t918 "}, "The result is 1,152.")])
    assert same["tools_argument_accuracy"] == 1.0 and same["tools_answer_accuracy"] == 1.0
    other = score_tools([case], [episode({"expression": "234+918"}, "234 + 918 = 1153")])
    assert other["tools_argument_accuracy"] == 0.0 and other["tools_answer_accuracy"] == 0.0
    assert normalize_arguments({"n": 5}) == normalize_arguments({"n": "5.0"}) == {"n": "5"}
    assert normalize_arguments({"city": "Paris"}) != normalize_arguments({"city": "paris"})
    assert normalize_arguments("not a dict") is None

    weather = {"prompt": "q", "tool": "get_weather", "arguments": {"city": "Oslo"},
               "answer": "It is foggy in Oslo today, 6 degrees, humidity 55%."}
    none = {"calls": [], "final_answer": "It is foggy in oslo today,  6 degrees, humidity 55%", "turns": 1,
            "error": None, "blocks": 0}
    wrong_number = {**none, "final_answer": "It is foggy in Oslo today, 7 degrees, humidity 55%."}
    metrics = score_tools([weather, weather], [none, wrong_number])
    assert metrics["tools_answer_accuracy"] == 0.5  # case and spacing ignored, numbers not
    assert metrics["tools_choice_accuracy"] == 0.0 and metrics["tools_call_rate"] == 0.0
    assert metrics["tools_parse_rate"] is None  # no call was attempted
    with pytest.raises(ValueError):
        score_tools([weather], [])


def test_load_tool_cases_names_each_bad_line(tmp_path):
    good = {"prompt": "What is 1 + 1?", "tool": "calculator", "arguments": {"expression": "1 + 1"}}
    lines = [json.dumps(good), "{not json", json.dumps({"prompt": "x", "tool": "calculator"}),
             json.dumps({**good, "tool": "send_email"}), json.dumps({**good, "arguments": {"city": "Paris"}}),
             json.dumps({**good, "arguments": "1 + 1"}), json.dumps({**good, "answer": 2})]
    path = tmp_path / "cases.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(DataError) as err:
        load_tool_cases(path)
    message = str(err.value)
    for line, reason in [(2, "invalid JSON"), (3, "missing key(s) 'arguments'"), (4, "unknown tool 'send_email'"),
                         (5, "missing 'expression', unexpected 'city'"), (6, "'arguments' must be an object")]:
        assert f"{path}:{line}: " in message and reason in message
    assert "... and 1 more" in message  # the first five are listed

    path.write_text(json.dumps(good) + "\n", encoding="utf-8")
    assert load_tool_cases(path) == [{**good, "answer": None}]
    path.write_text("\n", encoding="utf-8")
    with pytest.raises(DataError, match="empty file"):
        load_tool_cases(path)
    with pytest.raises(DataError, match="file not found"):
        load_tool_cases(tmp_path / "missing.jsonl")


def test_an_independent_reader_scores_kept_replies_as_tunechain_does():
    """scripts/check_eval_parity.py --tools: transformers' own response parser (trl's ChatML <tool_call> template,
    arguments typed by the tool schemas) and a BFCL-style match read the same kept replies. They agree where both
    rules say the same; they differ by design where BFCL ignores spaces inside a string."""
    import importlib.util

    from transformers import AutoTokenizer

    spec = importlib.util.spec_from_file_location("parity", Path(__file__).parents[1] / "scripts/check_eval_parity.py")
    parity = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(parity)
    case = {"prompt": "What is 234 + 918? Please use the calculator.", "tool": "calculator",
            "arguments": {"expression": "234 + 918"}}
    call = lambda name, expression: f'{TOOL_CALL_OPEN}\n{{"name": "{name}", "arguments": {{"expression": "{expression}"}}}}\n{TOOL_CALL_CLOSE}'  # noqa: E731,E501
    replies = [call("calculator", "234 + 918"), call("get_weather", "234 + 918"), call("calculator", "234 - 918"),
               "The answer is 1152.", f'{TOOL_CALL_OPEN}\n{{"name": "calculator"', call("calculator", "234+918"),
               f'{TOOL_CALL_OPEN}[{{"name": "calculator", "arguments": {{"expression": "234 + 918"}}}}]{TOOL_CALL_CLOSE}']
    rows = []
    for reply in replies:
        calls, _ = parse_tool_calls(reply)
        episode = {"calls": calls}
        rows.append({**case, "replies": [reply], "call_match": all(first_call_matches(case, episode))})
    ours, theirs, source = parity.tool_call_verdicts(rows, AutoTokenizer.from_pretrained("embedded/model"))
    assert "Qwen3" in source
    assert ours == [True, False, False, False, False, False, True]  # the last: a list of calls in one block
    assert theirs == [True, False, False, False, False, True, True]  # '234+918': BFCL drops spaces, tunechain keeps them
