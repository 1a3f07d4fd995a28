"""The project's tool set (pipeline/evaluation/scoring/tool_set.py: calculator, get_weather, search_knowledge) as
the environment of an RL stage: trl's GRPOTrainer runs the loop (the policy writes a call, the tool's message is
appended, the policy goes on) when it is given the tools as Python functions and a tokenizer that can parse
the policy's calls, and the `tool_use` reward scores the whole exchange.

    stages.grpo.tools=[calculator, get_weather, search_knowledge] stages.grpo.rewards=[tool_use]
"""
from __future__ import annotations

import inspect
import json
from typing import Any, Callable, Mapping

from pipeline.evaluation.scoring.tool_agent import answer_matches, normalize_arguments
from pipeline.evaluation.scoring.tool_set import TOOLS, execute_tool

# How a call opens in ChatML with Qwen's and Hermes' format (the embedded model's data too); a template that
# renders calls so gets trl's Qwen3 response template (give_parser).
CALL_TAG = "<tool_call>"


def tool_names() -> list[str]:
    return list(TOOLS)


def as_function(name: str) -> Callable[..., str]:
    """A tool as the Python function trl calls (keyword arguments -> the tool message); its signature and
    docstring carry the schema that transformers' get_json_schema reads."""
    tool = TOOLS[name]
    properties = tool.parameters["properties"]

    def call(**arguments: Any) -> str:
        return execute_tool(name, arguments)

    call.__name__ = name
    call.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [inspect.Parameter(p, inspect.Parameter.KEYWORD_ONLY, annotation=str) for p in properties],
        return_annotation=str)
    call.__annotations__ = {**{p: str for p in properties}, "return": str}
    call.__doc__ = tool.description + "\n\nArgs:\n" + "".join(
        f"    {p}: {spec.get('description', p)}\n" for p, spec in properties.items())
    return call


TEMPLATE_HINT = "model.chat_template; a ChatML model: model.chat_template=conf/chat_templates/chatml_tools.jinja"


def give_parser(tokenizer) -> str:
    """Make `tokenizer.parse_response` read the policy's tool calls, as trl's tool loop needs: trl's schema
    for the templates it knows, else trl's Qwen3 one where the chat template writes <tool_call> blocks. Returns
    what was used; raises ValueError when neither fits."""
    from trl.chat_template_utils import add_response_schema, qwen3_template

    if getattr(tokenizer, "response_template", None) or getattr(tokenizer, "response_schema", None):
        return "the tokenizer's own"
    try:
        add_response_schema(tokenizer)
        return "trl's, for this chat template"
    except ValueError:  # a template trl does not know
        pass
    probe = [{"role": "user", "content": "?"},
             {"role": "assistant", "tool_calls": [{"type": "function", "function": {"name": "f", "arguments": {}}}]}]
    try:
        rendered = tokenizer.apply_chat_template(probe, tokenize=False)
    except Exception as e:  # a template that cannot render a structured call at all
        raise ValueError(f"the chat template cannot render an assistant message with tool_calls "
                         f"({type(e).__name__}: {e}); give the model a tool-calling template ({TEMPLATE_HINT})")
    if CALL_TAG not in rendered or "<|im_start|>" not in rendered:
        raise ValueError("the chat template renders tool calls in a format trl cannot parse (neither a template trl "
                         f"knows nor ChatML with <tool_call> blocks); give the model such a template ({TEMPLATE_HINT})")
    tokenizer.response_template = qwen3_template
    return "Qwen3's (ChatML with <tool_call> blocks)"


def _assistant_calls(messages: list) -> list[dict]:
    calls = []
    for message in messages:
        if isinstance(message, Mapping) and message.get("role") == "assistant":
            for call in message.get("tool_calls") or []:
                fn = call.get("function", call)
                calls.append({"name": fn.get("name"), "arguments": fn.get("arguments")})
    return calls


def _final_answer(messages: list) -> str | None:
    """The last assistant message without a call, if the exchange ended with one."""
    last = messages[-1] if messages else None
    if isinstance(last, Mapping) and last.get("role") == "assistant" and not last.get("tool_calls"):
        return str(last.get("content") or "").strip() or None
    return None


def tool_use(completions: list, tool: list | None = None, arguments: list | None = None,
             answer: list | None = None, **_: Any) -> list[float | None]:
    """1.0 for the right final answer reached through the right first call (tool and arguments), 0.5 for the
    right call alone, 0.0 otherwise; None for records that are not tool cases. `arguments` may be a JSON string."""
    rewards: list[float | None] = []
    n = len(completions)
    for messages, name, expected, final in zip(completions, tool or [None] * n, arguments or [None] * n,
                                               answer or [None] * n):
        if name is None:
            rewards.append(None)
            continue
        expected = json.loads(expected) if isinstance(expected, str) else expected
        calls = _assistant_calls(messages if isinstance(messages, list) else [])
        right_call = bool(calls) and calls[0]["name"] == name and \
            normalize_arguments(calls[0]["arguments"]) == normalize_arguments(expected)
        answered = right_call and final is not None and answer_matches(_final_answer(messages), final, name)
        rewards.append(1.0 if answered else 0.5 if right_call else 0.0)
    return rewards
