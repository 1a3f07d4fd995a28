"""Tool calling in an agent loop: the tools are in tool_set.py, the
call format in tool_calls.py.

The agent loop (`run_episode`) sends the conversation to the model; when the reply holds tool calls,
it appends the reply as an assistant turn and each call's result as a `{"role": "tool", "content":
<result JSON>}` turn, then asks again; it stops at a reply without a call (the final answer) or after
`max_turns` replies. The tool turn is role "tool" with the bare result JSON because that is what the
embedded data trains on (sft_train.jsonl: user, assistant `<tool_call>...`, tool `{"result": 528}`,
assistant final); chat templates that want a `<tool_response>` wrapper
(Qwen) add it themselves when they render a "tool" message.

`score_tools(records, episodes)` compares episodes with the records of test_tools.jsonl
({prompt, tool, arguments, answer?, lang?}); `load_tool_cases(path)` reads and checks such a file.
"""
from __future__ import annotations

import re
import unicodedata
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from pipeline.answers import extract_answer, normalize_number
from pipeline.data.problems import DataError, Invalid, collect, kind_name
from pipeline.data.readers import display, existing_file, read_json, read_jsonl
from pipeline.evaluation.scoring.reasoning import split_think
from pipeline.evaluation.scoring.tool_calls import parse_tool_calls
from pipeline.evaluation.scoring.tool_set import TOOLS, execute_tool, tool_schemas

# ---------------------------------------------------------------------------------------------
# Agent loop

GenerateFn = Callable[[list[dict]], str]                   # one conversation -> the reply
BatchGenerateFn = Callable[[list[list[dict]]], list[str]]  # conversations -> replies


def run_episode(generate_fn: GenerateFn, messages: Sequence[Mapping], max_turns: int = 3) -> dict:
    """Run one conversation through the agent loop; `generate_fn(messages) -> reply text`.

    Returns {turns (model replies), calls [{turn, name, arguments, result}], final_answer (the reply
    without a call, think blocks removed; None when the loop did not end with one), error (None, or
    why it stopped early), replies (raw texts), messages (the whole conversation), blocks (tool-call
    blocks seen, parsed or not)}."""
    return run_episodes(lambda conversations: [generate_fn(c) for c in conversations], [messages], max_turns)[0]


def run_episodes(generate_batch: BatchGenerateFn, conversations: Sequence[Sequence[Mapping]],
                 max_turns: int = 3) -> list[dict]:
    """`run_episode` for many conversations, one batched generate call per turn for those still going."""
    if max_turns < 1:
        raise ValueError(f"max_turns must be at least 1, got {max_turns}")
    episodes = [{"turns": 0, "calls": [], "final_answer": None, "error": None, "replies": [],
                 "messages": [dict(m) for m in conv], "blocks": 0} for conv in conversations]
    active = list(range(len(episodes)))
    for turn in range(1, max_turns + 1):
        if not active:
            break
        replies = generate_batch([episodes[i]["messages"] for i in active])
        if len(replies) != len(active):
            raise ValueError(f"generate returned {len(replies)} replies for {len(active)} conversations")
        still = []
        for i, reply in zip(active, replies):
            if _step(episodes[i], turn, str(reply)):
                still.append(i)
        active = still
    for i in active:
        episodes[i]["error"] = f"no final answer after max_turns={max_turns} replies"
    return episodes


def _step(episode: dict, turn: int, reply: str) -> bool:
    """Apply one reply; True when the episode goes on."""
    episode["turns"] = turn
    episode["replies"].append(reply)
    episode["messages"].append({"role": "assistant", "content": reply})
    calls, blocks = parse_tool_calls(reply)
    episode["blocks"] += blocks
    if blocks and len(calls) < blocks:
        episode["error"] = f"turn {turn}: unparsable tool call (a <tool_call> block without valid JSON {{name, arguments}})"
        return False
    if not calls:
        episode["final_answer"] = split_think(reply)[1]
        return False
    for call in calls:
        result = execute_tool(call["name"], call["arguments"])
        episode["calls"].append({"turn": turn, **call, "result": result})
        episode["messages"].append({"role": "tool", "content": result})
    return True


def case_messages(record: Mapping, system: str | None = None) -> list[dict]:
    """The opening conversation of a test case: an optional system turn and the user's prompt."""
    return ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": record["prompt"]}]


def backend_generate(backend, tokenizer, max_new_tokens: int = 128, tools: bool = True) -> BatchGenerateFn:
    """A batch generate function over a pipeline Backend: each conversation is rendered with the
    tokenizer's chat template (with the tool schemas when `tools`; templates without tool support
    ignore them) and generated greedily."""
    schemas = tool_schemas() if tools else None

    def generate(conversations: list[list[dict]]) -> list[str]:
        prompts = [tokenizer.apply_chat_template(c, tools=schemas, tokenize=False, add_generation_prompt=True)
                   for c in conversations]
        return [g.text for g in backend.generate(prompts, max_new_tokens)]

    return generate


def evaluate_tools(generate_batch: BatchGenerateFn, records: Sequence[Mapping], max_turns: int = 3,
                   system: str | None = None) -> tuple[dict, list[dict]]:
    """Run every case through the agent loop and score it: (metrics, episodes)."""
    episodes = run_episodes(generate_batch, [case_messages(r, system) for r in records], max_turns)
    return score_tools(records, episodes), episodes


# ---------------------------------------------------------------------------------------------
# Scoring

def _norm_value(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {" ".join(str(k).split()): _norm_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_norm_value(v) for v in value]
    if isinstance(value, bool) or value is None:
        return value
    text = " ".join(unicodedata.normalize("NFKC", str(value)).split())
    number = normalize_number(text) if re.fullmatch(r"[-+]?[\d,]*\.?\d+(?:[eE][-+]?\d+)?", text) else None
    return number if number is not None else text


def normalize_arguments(arguments: Any) -> Any:
    """Arguments as compared: whitespace collapsed (and NFKC) in keys and values, numbers and numeric
    strings as one canonical number (5, "5", "5.0" -> "5"); case and everything else kept."""
    return _norm_value(arguments) if isinstance(arguments, Mapping) else None


def _norm_answer(text: str) -> str:
    text = " ".join(unicodedata.normalize("NFKC", text).split()).casefold()
    return text.rstrip(" .。!！")


def answer_matches(final_answer: str | None, expected: str, tool: str | None = None) -> bool:
    """The final answer equals the expected one (NFKC, case, spacing and a final full stop ignored);
    for calculator cases, the same final number also counts ("The result is 1152." for "234 + 918 = 1152")."""
    if final_answer is None:
        return False
    if _norm_answer(final_answer) == _norm_answer(expected):
        return True
    if tool == "calculator":
        target = extract_answer(expected)
        return target is not None and extract_answer(final_answer) == target
    return False


def _rate(hits: int, n: int) -> float | None:
    return round(hits / n, 4) if n else None


def first_call_matches(record: Mapping, episode: Mapping) -> tuple[bool, bool]:
    """(the first call names the expected tool, its arguments equal the expected ones)."""
    calls = episode.get("calls") or []
    if not calls:
        return False, False
    first = calls[0]
    return (first["name"] == record["tool"],
            normalize_arguments(first["arguments"]) == normalize_arguments(record["arguments"]))


def score_tools(records: Sequence[Mapping], episodes: Sequence[Mapping]) -> dict:
    """Metrics of episodes against their cases (same order), keys prefixed `tools_`:

    choice_accuracy    the first call names the expected tool (no call: wrong)
    argument_accuracy  the first call's arguments equal the expected ones (`normalize_arguments`)
    call_match         both (the embedded README's "name and arguments match")
    answer_accuracy    the final answer matches the case's `answer` (`answer_matches`), over the
                       `answer_n` cases that have one; None when none has
    parse_rate         parsed calls / `<tool_call>` blocks written; None when no block was written
    call_rate          share of cases with at least one parsed call
    mean_turns, error_rate, n
    """
    if len(records) != len(episodes):
        raise ValueError(f"{len(records)} records but {len(episodes)} episodes")
    n = len(records)
    choice = arguments = both = answered = answer_n = called = errors = 0
    blocks = parsed = 0
    for record, episode in zip(records, episodes):
        calls = episode.get("calls") or []
        blocks += episode.get("blocks", len(calls))
        parsed += len(calls)
        errors += episode.get("error") is not None
        first = calls[0] if calls else None
        called += first is not None
        name_ok, args_ok = first_call_matches(record, episode)
        choice += name_ok
        arguments += args_ok
        both += name_ok and args_ok
        if record.get("answer") is not None:
            answer_n += 1
            answered += answer_matches(episode.get("final_answer"), record["answer"], record.get("tool"))
    return {
        "tools_n": n,
        "tools_choice_accuracy": _rate(choice, n),
        "tools_argument_accuracy": _rate(arguments, n),
        "tools_call_match": _rate(both, n),
        "tools_answer_accuracy": _rate(answered, answer_n),
        "tools_answer_n": answer_n,
        "tools_parse_rate": _rate(parsed, blocks),
        "tools_call_rate": _rate(called, n),
        "tools_mean_turns": round(sum(e.get("turns", 0) for e in episodes) / n, 4) if n else None,
        "tools_error_rate": _rate(errors, n),
    }


# ---------------------------------------------------------------------------------------------
# Test cases

def _case(item: Any) -> dict:
    if not isinstance(item, dict):
        raise Invalid(f"expected a JSON object, got {kind_name(item)}")
    missing = [k for k in ("prompt", "tool", "arguments") if k not in item]
    if missing:
        raise Invalid(f"missing key(s) {', '.join(map(repr, missing))} (found: {', '.join(item) or 'none'})")
    if not isinstance(item["prompt"], str) or not item["prompt"].strip():
        raise Invalid(f"'prompt' must be a non-empty string, got {kind_name(item['prompt'])}")
    tool = TOOLS.get(item["tool"]) if isinstance(item["tool"], str) else None
    if tool is None:
        raise Invalid(f"'tool': unknown tool {item['tool']!r} (known: {', '.join(TOOLS)})")
    args = item["arguments"]
    if not isinstance(args, dict):
        raise Invalid(f"'arguments' must be an object, got {kind_name(args)}")
    missing = [p for p in tool.required if p not in args]
    unexpected = [a for a in args if a not in tool.parameters["properties"]]
    if missing or unexpected:
        problems = [f"missing {m!r}" for m in missing] + [f"unexpected {u!r}" for u in unexpected]
        raise Invalid(f"'arguments' for {tool.name}: {', '.join(problems)}")
    bad = [k for k, v in args.items() if not isinstance(v, str) or not v.strip()]
    if bad:
        raise Invalid(f"'arguments.{bad[0]}' must be a non-empty string, got {kind_name(args[bad[0]])}")
    for key in ("answer", "lang"):
        if item.get(key) is not None and not isinstance(item[key], str):
            raise Invalid(f"'{key}' must be a string, got {kind_name(item[key])}")
    return {**item, "answer": item.get("answer")}


def load_tool_cases(path: str | Path) -> list[dict]:
    """Tool-call test cases from a .jsonl (or .json list) file: {prompt, tool, arguments, answer?, lang?},
    `tool` one of TOOLS with its required arguments. Raises DataError with one `path:line: reason` per
    bad record (the first few)."""
    resolved = existing_file(str(path))
    where = display(resolved)
    suffix = resolved.suffix.lower()
    if suffix not in (".jsonl", ".json"):
        raise DataError(f"{where}: tool cases must be .jsonl or .json, got '{resolved.suffix}'")
    reader = read_jsonl if suffix == ".jsonl" else read_json
    return collect(reader(resolved, where), lambda _, item: _case(item), where)
