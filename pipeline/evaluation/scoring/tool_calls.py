"""Tool calls in the formats chat templates teach their models, each a JSON object {name, arguments}
(`parameters` is read as `arguments`, as Llama 3 writes it; `arguments` may be a JSON-encoded string,
as OpenAI sends it):
  - Hermes / Qwen / SmolLM3: `<tool_call>{...}</tool_call>`; Phi-4: `<|tool_call|>[{...}]<|/tool_call|>`;
  - Mistral: `[TOOL_CALLS][{...}, ...]`; Llama 3.x: `<|python_tag|>{...}` or the bare object;
  - a fenced ```json block holding the object or a list of them.
Special tokens are often dropped when a reply is decoded, so bare JSON objects with a name and arguments
count as calls; any other JSON in an answer does not.
"""
from __future__ import annotations

import json
import re

from pipeline.evaluation.scoring.reasoning import split_think

# ---------------------------------------------------------------------------------------------
# Parsing calls

TOOL_CALL_OPEN, TOOL_CALL_CLOSE = "<tool_call>", "</tool_call>"
_TAGGED = re.compile(r"(?:<tool_call>|<\|tool_call\|>)(.*?)(?:</tool_call>|<\|/tool_call\|>)", re.DOTALL)
_DECODER = json.JSONDecoder()


def _call(value) -> dict | None:
    if not isinstance(value, dict) or not isinstance(value.get("name"), str) or not value["name"].strip():
        return None
    arguments = value.get("arguments", value.get("parameters", {}))
    if isinstance(arguments, str):  # OpenAI sends arguments JSON-encoded
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except ValueError:
            return None
    if not isinstance(arguments, dict):
        return None
    return {"name": value["name"].strip(), "arguments": arguments}


def parse_tool_calls(text: str) -> tuple[list[dict], int]:
    """(parsed calls, number of call blocks) in the text outside `<think>` blocks. Tagged blocks whose
    body is not a JSON call are counted but not parsed; untagged, only JSON that is a call counts."""
    _, visible = split_think(text)
    blocks = _TAGGED.findall(visible)
    if blocks:
        calls = [c for body in blocks for c in _calls_in(body)]
        return calls, max(len(blocks), len(calls))
    if TOOL_CALL_OPEN in visible:
        return [], 1  # a tag never closed: the reply was cut inside its call
    calls = _bare_calls(visible)
    return calls, len(calls)


def _calls_in(body: str) -> list[dict]:
    try:
        value = json.loads(body)
    except ValueError:
        return []
    return _calls_of(value)


def _calls_of(value) -> list[dict]:
    return [c for c in map(_call, value if isinstance(value, list) else [value]) if c]


def _bare_calls(text: str) -> list[dict]:
    """Calls written as JSON objects (or lists of them) anywhere in the text: after [TOOL_CALLS], <|python_tag|>,
    in a ```json fence, or bare."""
    calls, position = [], 0
    while (start := _next_json(text, position)) != -1:
        try:
            value, end = _DECODER.raw_decode(text, start)
        except ValueError:
            position = start + 1
            continue
        found = _calls_of(value)
        calls += found
        position = end if found else start + 1
    return calls


def _next_json(text: str, position: int) -> int:
    starts = [i for i in (text.find("{", position), text.find("[", position)) if i != -1]
    return min(starts) if starts else -1
