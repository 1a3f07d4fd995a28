"""A call is the assistant text `<tool_call>{"name": ..., "arguments": {...}}</tool_call>` (whitespace
around the JSON is fine; `arguments` may also be a JSON-encoded string, as OpenAI sends it).
"""
from __future__ import annotations

import json
import re

from pipeline.evaluation.scoring.reasoning import split_think

# ---------------------------------------------------------------------------------------------
# Parsing calls

TOOL_CALL_OPEN, TOOL_CALL_CLOSE = "<tool_call>", "</tool_call>"
_CALL = re.compile(re.escape(TOOL_CALL_OPEN) + r"(.*?)" + re.escape(TOOL_CALL_CLOSE), re.DOTALL)


def _call(body: str) -> dict | None:
    try:
        value = json.loads(body)
    except ValueError:
        return None
    if not isinstance(value, dict) or not isinstance(value.get("name"), str) or not value["name"].strip():
        return None
    arguments = value.get("arguments", {})
    if isinstance(arguments, str):  # OpenAI sends arguments JSON-encoded
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except ValueError:
            return None
    if not isinstance(arguments, dict):
        return None
    return {"name": value["name"].strip(), "arguments": arguments}


def parse_tool_calls(text: str) -> tuple[list[dict], int]:
    """(parsed calls, number of `<tool_call>` blocks) in the text outside `<think>` blocks; a block
    whose body is not a JSON object {name, arguments} is counted but not parsed."""
    _, visible = split_think(text)
    blocks = _CALL.findall(visible)
    calls = [c for c in (_call(b) for b in blocks) if c is not None]
    return calls, len(blocks)
