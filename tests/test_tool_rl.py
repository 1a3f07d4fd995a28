"""RL with tools in the loop: the project's tools as trl's functions, the chat template and parser that let
trl run the loop on the embedded model, the tool_use reward on whole exchanges, and plan-time checks.
(The tool_rl recipe's figures: README, measured on the embedded model.)"""
import json

import pytest
from conftest import EMBEDDED, ROOT, compose

from pipeline.engine.plan import build_plan
from pipeline.engine.store import Store
from pipeline.errors import ConfigError
from pipeline.training.tool_env import as_function, give_parser, tool_use


def _call(name, arguments):
    return {"role": "assistant", "content": "", "tool_calls": [{"type": "function",
                                                                 "function": {"name": name, "arguments": arguments}}]}


def test_tool_use_rewards_the_answer_reached_through_the_right_call():
    tool_msg = {"role": "tool", "content": '{"result": 1152}'}
    exchanges = [
        [_call("calculator", {"expression": "234 + 918"}), tool_msg, {"role": "assistant", "content": "234 + 918 = 1152"}],
        [_call("calculator", {"expression": "234 + 918"}), tool_msg, {"role": "assistant", "content": "It is 1000."}],
        [_call("calculator", {"expression": "234 + 919"}), tool_msg, {"role": "assistant", "content": "234 + 918 = 1152"}],
        [{"role": "assistant", "content": "234 + 918 = 1152"}],   # right answer, no call: not through the tool
        [_call("calculator", {"expression": "234 + 918"})],       # the exchange was cut after the call
    ]
    n = len(exchanges)
    assert tool_use(exchanges, tool=["calculator"] * n, arguments=['{"expression": "234 + 918"}'] * n,
                    answer=["234 + 918 = 1152"] * n) == [1.0, 0.5, 0.0, 0.0, 0.5]
    assert tool_use([[{"role": "assistant", "content": "8"}]], tool=[None], arguments=[None], answer=["8"]) == [None]


def test_tools_become_functions_with_the_schema_of_the_tool_set():
    from transformers.utils import get_json_schema

    from pipeline.evaluation.scoring.tool_set import TOOLS

    for name, tool in TOOLS.items():
        schema = get_json_schema(as_function(name))
        assert schema["function"]["name"] == name and schema["function"]["description"] == tool.description
        assert sorted(schema["function"]["parameters"]["properties"]) == sorted(tool.parameters["properties"])
    assert json.loads(as_function("calculator")(expression="39 + 64 * 4")) == {"result": 295}


def test_the_embedded_template_writes_structured_calls_as_the_data_does():
    """Every tool chat of the shipped SFT data renders to the same text with its calls as structured tool_calls,
    and trl's parser (given by give_parser) reads the call back."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(EMBEDDED)
    checked = 0
    for line in open(ROOT / "embedded" / "data" / "sft_train.jsonl"):
        record = json.loads(line)
        if record["task"] != "tool":
            continue
        structured = []
        for m in record["messages"]:
            if m["role"] == "assistant" and m["content"].startswith("<tool_call>"):
                call = json.loads(m["content"][len("<tool_call>"):-len("</tool_call>")])
                structured.append(_call(call["name"], call["arguments"]))
            else:
                structured.append(m)
        assert tokenizer.apply_chat_template(structured, tokenize=False) == \
            tokenizer.apply_chat_template(record["messages"], tokenize=False)
        checked += 1
    assert checked == 500
    assert give_parser(tokenizer) == "Qwen3's (ChatML with <tool_call> blocks)"
    parsed = tokenizer.parse_response('<tool_call>{"name": "get_weather", "arguments": {"city": "Lima"}}</tool_call>'
                                      "<|im_end|>", prefix="<|im_start|>assistant\n")
    assert parsed["tool_calls"][0]["function"] == {"name": "get_weather", "arguments": {"city": "Lima"}}


def test_a_template_that_cannot_render_calls_is_refused_in_one_line():
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(EMBEDDED)
    tokenizer.chat_template = "{% for m in messages %}{{ m['content'] + '\\n' }}{% endfor %}"
    with pytest.raises(ValueError, match=r"^the chat template"):
        give_parser(tokenizer)


@pytest.mark.parametrize("override, message", [
    ("stages.grpo.tools=[calculator,browser]", r"^stages\.grpo\.tools: \['browser'\] are not tools of the project's "
                                               r"set; valid: calculator, get_weather, search_knowledge$"),
    ("stages.grpo.difficulty.samples=4", r"^stages\.grpo\.difficulty\.samples: the pass-rate measurement samples "
                                         r"single replies, not the tool loop"),
])
def test_bad_tool_settings_fail_at_plan_time(override, message, tmp_path):
    with pytest.raises(ConfigError, match=message):
        build_plan(compose(["recipe=tool_rl", "logger=none", override]), Store(tmp_path / "store"), recipe="tool_rl",
                   device="cpu")


def test_a_chat_template_that_cannot_write_calls_is_refused_at_plan_time(tmp_path):
    """SmolLM2's template, for one, has no tool calls: the plan says so before any stage runs."""
    template = tmp_path / "plain.jinja"
    template.write_text("{% for m in messages %}{{ m['content'] + '\\n' }}{% endfor %}")
    with pytest.raises(ConfigError, match=r"^stages\.grpo\.tools: the chat template cannot render an assistant message with tool_calls"):
        build_plan(compose(["recipe=tool_rl", "logger=none", f"model.chat_template={template}"]),
                   Store(tmp_path / "store"), recipe="tool_rl", device="cpu")


def test_recipe_trains_on_the_tool_cases_and_evaluates_the_held_out_ones(tmp_path):
    plan = build_plan(compose(["recipe=tool_rl", "logger=none"]), Store(tmp_path / "store"), recipe="tool_rl",
                      device="cpu")
    steps = {s.name: s for s in plan.steps}
    assert steps["grpo"].cfg.dataset.path.endswith("prompts_tools.jsonl") and steps["grpo"].cfg.tools
    assert steps["eval_sft"].cfg.tasks == ["tools"] and steps["eval_grpo"].cfg.compare_with == "eval_sft"


@pytest.mark.acceptance
def test_tool_rl_recipe_answers_more_held_out_cases_through_tools(tmp_path):
    """Acceptance (README: answered right 52.5% -> 60.0%): GRPO with the tools in the loop raises the held-out
    tool cases answered right, and its mean tool_use reward rises."""
    from conftest import read_chain, run_main

    result = run_main(["recipe=tool_rl", "hardware.num_threads=1"], tmp_path, timeout=1800)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    stages = {s["name"]: s for s in read_chain(tmp_path / "run")["stages"]}
    before, after = (stages[n]["metrics"]["tools_answer_accuracy"] for n in ("eval_sft", "eval_grpo"))
    assert after > before, (before, after)
    grpo = stages["grpo"]["metrics"]
    assert grpo["reward_end"] > grpo["reward_start"], grpo
