"""Formats -> canonical records, per purpose: detection from a record's keys, the field checks the
formats share, and one converter per (purpose, format)."""
from __future__ import annotations

import re
from typing import Any, Callable, Optional

from pipeline.answers import normalize_number
from pipeline.data.check_specs import validate_spec
from pipeline.data.parts import content_parts, finished, text_of
from pipeline.data.problems import DataError, Invalid, kind_name

FORMATS = ("messages", "alpaca", "sharegpt", "preference", "unpaired", "prompt", "gsm8k", "text")
ROLES = ("system", "user", "assistant", "tool")
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def gsm8k_target(answer: str) -> Optional[str]:
    """The number after the last '####', normalised as every answer is (pipeline.answers:
    1,000 -> 1000, $5 -> 5, 18.0 -> 18, 007 -> 7), else None."""
    if "####" not in answer:
        return None
    number = answer.rsplit("####", 1)[1].replace(",", "").replace("$", "").strip().rstrip(".")
    return normalize_number(number) if _NUMBER.fullmatch(number) else None


# Checked in order: preference records also have 'prompt', gsm8k-like ones may too.
_DETECTION = (
    ({"messages"}, "messages"),
    ({"conversations"}, "sharegpt"),
    ({"instruction", "output"}, "alpaca"),
    ({"chosen", "rejected"}, "preference"),
    ({"completion", "label"}, "unpaired"),
    ({"question", "answer"}, "gsm8k"),
    ({"prompt"}, "prompt"),
    ({"text"}, "text"),
)


def detect(record: dict, location: str) -> str:
    for keys, fmt in _DETECTION:
        if keys <= record.keys():
            return fmt
    raise DataError(f"{location}: cannot detect the format from keys [{', '.join(record)}]; "
                    f"set format: to one of {', '.join(FORMATS)}, or rename keys with columns:")


# What each purpose needs, for the message when a format cannot provide it.
_NEEDS = {
    "sft": "conversations ending with an assistant reply (formats: messages, alpaca, sharegpt)",
    "preference": "prompt/chosen/rejected",
    "unpaired": "prompt/completion/label (true: a good completion), or preference pairs (each split into a good "
                "and a bad one)",
    "prompt": "prompts (formats: prompt, gsm8k, messages)",
    "gsm8k": "question/answer with a '#### <number>' final answer",
    "text": "text",
    "instruct": "prompt plus a verifiable check {type, ...} (format: prompt)",
}


def converter(fmt: str, purpose: str, where: str, detected: bool = False) -> Callable[[dict], dict]:
    convert = _CONVERTERS[purpose].get(fmt)
    if convert is None:
        how = " (auto-detected)" if detected else ""
        raise DataError(f"{where}: format '{fmt}'{how} cannot feed a {purpose} stage: needs {_NEEDS[purpose]}")
    return lambda record: finished(convert(record), record)


# ---------------------------------------------------------------------------------------------
# Field checks shared by the formats

def _require(record: dict, *keys: str) -> None:
    missing = [k for k in keys if k not in record]
    if missing:
        noun = "key" if len(missing) == 1 else "keys"
        found = ", ".join(map(str, record)) or "none"
        raise Invalid(f"missing {noun} {', '.join(map(repr, missing))} (found: {found})")


def _string(record: dict, key: str) -> str:
    value = record[key]
    if not isinstance(value, str):
        raise Invalid(f"'{key}' must be a string, got {kind_name(value)}")
    if not value.strip():
        raise Invalid(f"'{key}' is empty")
    return value


def _optional_string(record: dict, key: str) -> str:
    value = record.get(key, "")
    if not isinstance(value, str):
        raise Invalid(f"'{key}' must be a string, got {kind_name(value)}")
    return value


def _message(item: Any, where: str) -> dict:
    """One message, validated, its content a string or parts (pipeline/data/parts.py); extra keys (name, tool_calls...) are kept for chat templates."""
    if not isinstance(item, dict):
        raise Invalid(f"{where} must be an object with role and content, got {kind_name(item)}")
    role, content = item.get("role"), item.get("content")
    if role not in ROLES:
        raise Invalid(f"{where}: invalid role {role!r} (expected one of {', '.join(ROLES)})")
    calls_tools = role == "assistant" and bool(item.get("tool_calls"))
    if content is None and calls_tools:  # OpenAI tool-call turns may carry no text
        content = ""
    if isinstance(content, list):
        content = content_parts(content, where)
    elif not isinstance(content, str):
        raise Invalid(f"{where}: content must be a string or a list of parts, got {kind_name(content)}")
    empty = not content if isinstance(content, list) else not content.strip()
    if role in ("user", "assistant") and empty and not calls_tools:
        raise Invalid(f"{where}: empty {role} content")
    return {**{k: v for k, v in item.items() if v is not None}, "role": role, "content": content}


def _messages(value: Any, name: str) -> list[dict]:
    if not isinstance(value, list):
        raise Invalid(f"'{name}' must be a list of messages, got {kind_name(value)}")
    if not value:
        raise Invalid(f"'{name}' is empty")
    return [_message(item, f"{name}[{i}]") for i, item in enumerate(value)]


def _has_user(messages: list[dict], name: str) -> list[dict]:
    if not any(m["role"] == "user" for m in messages):
        raise Invalid(f"'{name}' has no user message")
    return messages


def _ends_with_assistant(messages: list[dict], name: str) -> list[dict]:
    if not messages or messages[-1]["role"] != "assistant":
        last = f"'{messages[-1]['role']}'" if messages else "nothing"
        raise Invalid(f"'{name}' must end with an assistant message, not {last}")
    return messages


def _conversation(messages: list[dict], name: str) -> list[dict]:
    return _ends_with_assistant(_has_user(messages, name), name)


def _as_messages(value: Any, name: str, role: str) -> list[dict]:
    """A plain string is shorthand for a single `role` message."""
    if isinstance(value, str):
        if not value.strip():
            raise Invalid(f"'{name}' is empty")
        return [{"role": role, "content": value}]
    if isinstance(value, list):
        return _messages(value, name)
    raise Invalid(f"'{name}' must be a string or a list of messages, got {kind_name(value)}")


def _answer(value: Any) -> Optional[str]:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise Invalid(f"'answer' must be a string or number, got {kind_name(value)}")
    return str(value) if str(value).strip() else None  # empty CSV cells mean no answer


# ---------------------------------------------------------------------------------------------
# Formats -> canonical records, per purpose

def _sft_from_messages(record: dict) -> dict:
    _require(record, "messages")
    return {"messages": _conversation(_messages(record["messages"], "messages"), "messages")}


def _sft_from_alpaca(record: dict) -> dict:
    _require(record, "instruction", "output")
    prompt, extra = _string(record, "instruction"), _optional_string(record, "input")
    if extra.strip():
        prompt = f"{prompt}\n\n{extra}"
    system = _optional_string(record, "system")
    messages = [{"role": "system", "content": system}] if system.strip() else []
    messages += [{"role": "user", "content": prompt}, {"role": "assistant", "content": _string(record, "output")}]
    return {"messages": messages}


# ShareGPT speaker names -> roles: function_call is the model's turn, observation the tool's reply.
_SPEAKERS = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system",
             "tool": "tool", "observation": "tool", "function_call": "assistant"}


def _sft_from_sharegpt(record: dict) -> dict:
    _require(record, "conversations")
    turns = record["conversations"]
    if not isinstance(turns, list):
        raise Invalid(f"'conversations' must be a list of turns, got {kind_name(turns)}")
    messages = []
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict):
            raise Invalid(f"conversations[{i}] must be an object with from and value, got {kind_name(turn)}")
        role = _SPEAKERS.get(turn.get("from"))
        if role is None:
            raise Invalid(f"conversations[{i}]: unknown speaker {turn.get('from')!r} "
                           f"(expected one of {', '.join(_SPEAKERS)})")
        messages.append({"role": role, "content": turn.get("value")})
    messages = _conversation(_messages(messages, "conversations"), "conversations")
    system = _optional_string(record, "system")  # LLaMA-Factory keeps the system prompt beside the turns
    return {"messages": ([{"role": "system", "content": system}] if system.strip() else []) + messages}


def _shared_prompt(chosen: list[dict], rejected: list[dict]) -> tuple[list[dict], list[dict], list[dict]]:
    """TRL's implicit-prompt form: the messages both sides share are the prompt."""
    n = 0
    while n < min(len(chosen), len(rejected)) and chosen[n] == rejected[n]:
        n += 1
    if n == 0:
        raise Invalid("chosen and rejected share no prompt messages; add a 'prompt' key")
    return chosen[:n], chosen[n:], rejected[n:]


def _preference(record: dict) -> dict:
    implicit_prompt = "prompt" not in record and isinstance(record.get("chosen"), list)
    _require(record, *(("chosen", "rejected") if implicit_prompt else ("prompt", "chosen", "rejected")))
    chosen = _as_messages(record["chosen"], "chosen", "assistant")
    rejected = _as_messages(record["rejected"], "rejected", "assistant")
    if chosen == rejected:
        raise Invalid("chosen and rejected are identical")
    if implicit_prompt:
        prompt, chosen, rejected = _shared_prompt(chosen, rejected)
    else:
        prompt = _as_messages(record["prompt"], "prompt", "user")
    return {"prompt": _has_user(prompt, "prompt"), "chosen": _ends_with_assistant(chosen, "chosen"),
            "rejected": _ends_with_assistant(rejected, "rejected")}


def _unpaired(record: dict) -> dict:
    """KTO's unpaired form: one completion, labelled desirable (true) or not (false)."""
    _require(record, "prompt", "completion", "label")
    if not isinstance(record["label"], bool):
        raise Invalid(f"'label' must be true (a desirable completion) or false, got {kind_name(record['label'])} "
                      f"{record['label']!r}")
    completion = _ends_with_assistant(_as_messages(record["completion"], "completion", "assistant"), "completion")
    return {"prompt": _has_user(_as_messages(record["prompt"], "prompt", "user"), "prompt"),
            "completion": completion, "label": record["label"]}


def _prompt_from_prompt(record: dict) -> dict:
    _require(record, "prompt")
    prompt = _has_user(_as_messages(record["prompt"], "prompt", "user"), "prompt")
    answer = _answer(record["answer"]) if "answer" in record else None
    return {**record, "prompt": prompt, "answer": answer}


def _prompt_from_gsm8k(record: dict) -> dict:
    problem = _gsm8k(record)
    rest = {k: v for k, v in record.items() if k not in ("question", "answer")}
    return {**rest, "prompt": [{"role": "user", "content": problem["question"]}], "answer": problem["target"]}


def _prompt_from_messages(record: dict) -> dict:
    """The conversation minus a trailing assistant reply, which becomes the reference answer."""
    _require(record, "messages")
    messages = _messages(record["messages"], "messages")
    reply = None
    if messages[-1]["role"] == "assistant":
        reply, messages = text_of(messages[-1]["content"], f"messages[{len(messages) - 1}]"), messages[:-1]
    answer = _answer(record["answer"]) if "answer" in record else reply
    rest = {k: v for k, v in record.items() if k != "messages"}
    return {**rest, "prompt": _has_user(messages, "messages"), "answer": answer}


def _gsm8k(record: dict) -> dict:
    _require(record, "question", "answer")
    question, answer = _string(record, "question"), _string(record, "answer")
    target = gsm8k_target(answer)
    if target is None:
        raise Invalid("'answer' has no number after '####'")
    return {"question": question, "answer": answer, "target": target}


def _text(record: dict) -> dict:
    _require(record, "text")
    return {"text": _string(record, "text")}


def _instruct(record: dict) -> dict:
    """A prompt with a verifiable check (pipeline/data/check_specs.py) and an optional reference answer."""
    _require(record, "prompt", "check")
    prompt = _string(record, "prompt")
    if not isinstance(record["check"], dict):
        raise Invalid(f"'check' must be an object {{type, ...}}, got {kind_name(record['check'])}")
    problem = validate_spec(record["check"])
    if problem:
        raise Invalid(f"check: {problem}")
    reference = _optional_string(record, "reference") if "reference" in record else None
    return {**record, "prompt": prompt, "reference": reference}


_CONVERTERS: dict[str, dict[str, Callable[[dict], dict]]] = {
    "sft": {"messages": _sft_from_messages, "alpaca": _sft_from_alpaca, "sharegpt": _sft_from_sharegpt},
    "preference": {"preference": _preference},
    "unpaired": {"unpaired": _unpaired, "preference": _preference},  # pairs: split by the stage (unpair)
    "prompt": {"prompt": _prompt_from_prompt, "gsm8k": _prompt_from_gsm8k, "messages": _prompt_from_messages},
    "gsm8k": {"gsm8k": _gsm8k},
    "text": {"text": _text},
    "instruct": {"prompt": _instruct},
}
