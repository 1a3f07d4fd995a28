"""Datasets for every stage: where they come from, what they must contain, what stages get.

A stage names its data with a DatasetSpec (from conf/data/*.yaml) and a purpose. `check`
validates every record before any training starts, so a bad line fails the plan in seconds
instead of a run hours in; `load` hands the stage records in one canonical shape per purpose:

    sft         {"messages": [...]}  ending with an assistant message
    preference  {"prompt": [...], "chosen": [...], "rejected": [...]}
    prompt      {"prompt": [...], "answer": str | None, **other keys}   (RL prompts)
    gsm8k       {"question": str, "answer": str, "target": str}
    text        {"text": str}

where messages are [{"role": system|user|assistant|tool, "content": str}, ...].
"""
from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, Mapping, Optional

from omegaconf import MISSING

from pipeline import paths
from pipeline.engine.fingerprint import file_digest
from pipeline.errors import TunechainError

EXTENSIONS = (".jsonl", ".json", ".csv", ".parquet")
FORMATS = ("messages", "alpaca", "sharegpt", "preference", "prompt", "gsm8k", "text")
PURPOSES = ("sft", "preference", "prompt", "gsm8k", "text", "instruct")
ROLES = ("system", "user", "assistant", "tool")
MAX_LISTED_ERRORS = 5  # a file with thousands of bad lines needs its first few, not all
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


@dataclass
class DatasetSpec:
    """One dataset as a config names it; types stay OmegaConf-compatible for structured configs."""

    path: str = MISSING            # local .jsonl/.json/.csv/.parquet (absolute or project-root relative), or a hub id
    format: str = "auto"           # auto | messages | alpaca | sharegpt | preference | prompt | gsm8k | text
    split: str = "train"           # hub split
    subset: Optional[str] = None   # hub config name
    limit: Optional[int] = None    # keep the first N records
    columns: Dict[str, str] = field(default_factory=dict)  # source column -> canonical key


class DataError(TunechainError, ValueError):
    """A dataset cannot feed its stage; each message line names path:line and the reason."""


class _Invalid(Exception):
    """One record's problem; collected per record and reported with its location."""


# ---------------------------------------------------------------------------------------------
# Public API

def resolve_path(path: str) -> Path:
    """pipeline.paths' rule: the working folder, then the project root."""
    return paths.resolve(path)


def check(spec: DatasetSpec | Mapping[str, Any] | str, purpose: str) -> int:
    """Validate every record for `purpose`; return the record count or raise DataError."""
    return sum(1 for _ in _canonical(spec, purpose))


def load(spec: DatasetSpec | Mapping[str, Any] | str, purpose: str) -> list[dict]:
    """Every record in the canonical shape for `purpose` (validated as `check` does)."""
    return list(_canonical(spec, purpose))


_DIGESTS: dict[tuple[str, int, int], str] = {}  # (path, mtime_ns, size) -> digest: plans re-check often


def fingerprint(spec: DatasetSpec | Mapping[str, Any] | str) -> str:
    """sha256 of a local file's bytes; for a hub dataset, its id, subset and split."""
    spec = _as_spec(spec)
    if _is_hub(spec.path):
        return f"hub:{spec.path}:{spec.subset or ''}:{spec.split}"
    path = _existing_file(spec.path)
    stat = path.stat()
    key = (str(path), stat.st_mtime_ns, stat.st_size)
    if key not in _DIGESTS:
        _DIGESTS[key] = file_digest(path)
    return _DIGESTS[key]


def gsm8k_target(answer: str) -> Optional[str]:
    """The number after the last '####', normalised as every answer is (pipeline.evaluation.answers:
    1,000 -> 1000, $5 -> 5, 18.0 -> 18, 007 -> 7), else None."""
    from pipeline.evaluation.answers import normalize_number

    if "####" not in answer:
        return None
    number = answer.rsplit("####", 1)[1].replace(",", "").replace("$", "").strip().rstrip(".")
    return normalize_number(number) if _NUMBER.fullmatch(number) else None


# ---------------------------------------------------------------------------------------------
# Spec handling and the validation loop

def _as_spec(spec: DatasetSpec | Mapping[str, Any] | str) -> DatasetSpec:
    """Stages may pass a DatasetSpec, a plain dict or DictConfig, or a bare path."""
    if isinstance(spec, str):
        spec = DatasetSpec(path=spec)
    elif isinstance(spec, Mapping):
        fields = dict(spec)
        fields["columns"] = dict(fields.get("columns") or {})
        try:
            spec = DatasetSpec(**fields)
        except TypeError as e:  # an unknown key
            raise DataError(f"invalid dataset spec {fields}: {e}") from None
    if not spec.path or spec.path == MISSING:
        raise DataError("dataset spec has no path: set path to a local file or a hub dataset id")
    return spec


def _canonical(spec: DatasetSpec | Mapping[str, Any] | str, purpose: str) -> Iterator[dict]:
    """Yield canonical records; after the last one, raise DataError if any record was bad."""
    if purpose not in PURPOSES:
        raise ValueError(f"unknown data purpose '{purpose}' (known: {', '.join(PURPOSES)})")
    spec = _as_spec(spec)
    where = _where(spec)
    if spec.format != "auto" and spec.format not in FORMATS:
        raise DataError(f"{where}: unknown format '{spec.format}' (known: auto, {', '.join(FORMATS)})")
    if spec.limit is not None and spec.limit < 1:
        raise DataError(f"{where}: limit must be a positive number of records, got {spec.limit}")
    convert = None if spec.format == "auto" else _converter(spec.format, purpose, where)
    errors: list[str] = []
    count = 0
    for location, item in islice(_entries(spec, where), spec.limit):
        count += 1
        try:
            record = _record(item, spec.columns)
            if convert is None:
                convert = _converter(_detect(record, location), purpose, where, detected=True)
            yield convert(record)
        except _Invalid as e:
            errors.append(f"{location}: {e}")
    if count == 0:
        raise DataError(f"{where}: empty file (no records)" if not _is_hub(spec.path)
                        else f"{where}: split '{spec.split}' has no records")
    if errors:
        raise DataError(_summarise(errors))


def _summarise(errors: list[str]) -> str:
    shown = errors[:MAX_LISTED_ERRORS]
    if len(errors) > len(shown):
        shown.append(f"... and {len(errors) - len(shown)} more")
    return "\n".join(shown)


def _record(item: Any, columns: Mapping[str, str]) -> dict:
    """A source entry as a dict with canonical key names; null values count as absent."""
    if isinstance(item, _Invalid):
        raise item
    if not isinstance(item, dict):
        raise _Invalid(f"expected a JSON object, got {_kind(item)}")
    record = {k: v for k, v in item.items() if k not in columns and v is not None}
    record.update({new: item[old] for old, new in columns.items() if item.get(old) is not None})
    return record


# Checked in order: preference records also have 'prompt', gsm8k-like ones may too.
_DETECTION = (
    ({"messages"}, "messages"),
    ({"conversations"}, "sharegpt"),
    ({"instruction", "output"}, "alpaca"),
    ({"chosen", "rejected"}, "preference"),
    ({"question", "answer"}, "gsm8k"),
    ({"prompt"}, "prompt"),
    ({"text"}, "text"),
)


def _detect(record: dict, location: str) -> str:
    for keys, fmt in _DETECTION:
        if keys <= record.keys():
            return fmt
    raise DataError(f"{location}: cannot detect the format from keys [{', '.join(record)}]; "
                    f"set format: to one of {', '.join(FORMATS)}, or rename keys with columns:")


# What each purpose needs, for the message when a format cannot provide it.
_NEEDS = {
    "sft": "conversations ending with an assistant reply (formats: messages, alpaca, sharegpt)",
    "preference": "prompt/chosen/rejected",
    "prompt": "prompts (formats: prompt, gsm8k, messages)",
    "gsm8k": "question/answer with a '#### <number>' final answer",
    "text": "text",
    "instruct": "prompt plus a verifiable check {type, ...} (format: prompt)",
}


def _converter(fmt: str, purpose: str, where: str, detected: bool = False) -> Callable[[dict], dict]:
    convert = _CONVERTERS[purpose].get(fmt)
    if convert is None:
        how = " (auto-detected)" if detected else ""
        raise DataError(f"{where}: format '{fmt}'{how} cannot feed a {purpose} stage: needs {_NEEDS[purpose]}")
    return convert


# ---------------------------------------------------------------------------------------------
# Sources: each yields (location, raw entry or _Invalid) so one bad line doesn't hide the rest

def _is_hub(path: str) -> bool:
    """A hub id is neither an existing path nor shaped like a file path (known extension,
    absolute or ./ relative, or more folders than a hub 'org/name' has)."""
    if resolve_path(path).exists():
        return False
    file_like = (Path(path).suffix.lower() in EXTENSIONS or path.startswith(("/", ".", "~"))
                 or path.count("/") > 1)
    return not file_like


def _display(path: Path) -> str:
    try:
        return str(path.relative_to(paths.PROJECT_ROOT))
    except ValueError:
        return str(path)


def _where(spec: DatasetSpec) -> str:
    return f"dataset '{spec.path}'" if _is_hub(spec.path) else _display(resolve_path(spec.path))


def _existing_file(path: str) -> Path:
    resolved = resolve_path(path)
    if resolved.is_file():
        return resolved
    problem = "is a folder, not a file" if resolved.is_dir() else "file not found"
    raise DataError(f"{_display(resolved)}: {problem} (tried {paths.tried(path)})")


def _entries(spec: DatasetSpec, where: str) -> Iterator[tuple[str, Any]]:
    if _is_hub(spec.path):
        return _read_hub(spec, where)
    path = _existing_file(spec.path)
    reader = _READERS.get(path.suffix.lower())
    if reader is None:
        raise DataError(f"{where}: unknown extension '{path.suffix}' (valid: {', '.join(EXTENSIONS)})")
    return reader(path, where)


def _json_problem(e: json.JSONDecodeError) -> str:
    return f"invalid JSON ({e.msg}: column {e.colno})"


def _read_jsonl(path: Path, where: str) -> Iterator[tuple[str, Any]]:
    with path.open("rb") as lines:  # bytes: json.loads then handles a BOM and reports bad UTF-8 per line
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                yield f"{where}:{number}", json.loads(line)
            except json.JSONDecodeError as e:
                yield f"{where}:{number}", _Invalid(_json_problem(e))
            except UnicodeDecodeError as e:
                yield f"{where}:{number}", _Invalid(f"not valid UTF-8 ({e.reason} at byte {e.start})")


def _read_json(path: Path, where: str) -> Iterator[tuple[str, Any]]:
    try:
        items = json.loads(path.read_bytes())
    except json.JSONDecodeError as e:
        hint = "; one object per line? name the file .jsonl" if e.msg == "Extra data" else ""
        raise DataError(f"{where}:{e.lineno}: {_json_problem(e)}{hint}") from None
    except UnicodeDecodeError as e:
        raise DataError(f"{where}: not valid UTF-8 ({e.reason} at byte {e.start})") from None
    if not isinstance(items, list):
        raise DataError(f"{where}: expected a JSON list of objects, got {_kind(items)}")
    for number, item in enumerate(items, 1):
        yield f"{where}: item {number}", item


def _read_csv(path: Path, where: str) -> Iterator[tuple[str, Any]]:
    with path.open(encoding="utf-8-sig", newline="") as handle:
        rows = csv.DictReader(handle)
        try:
            for row in rows:
                location = f"{where}:{rows.line_num}"  # the header is line 1
                if None in row:  # DictReader files surplus cells under None
                    yield location, _Invalid(f"more cells than the header's {len(rows.fieldnames or [])} columns")
                else:
                    yield location, row
        except csv.Error as e:
            raise DataError(f"{where}:{rows.line_num}: malformed CSV ({e})") from None
        except UnicodeDecodeError as e:
            raise DataError(f"{where}: not valid UTF-8 ({e.reason})") from None


def _read_parquet(path: Path, where: str) -> Iterator[tuple[str, Any]]:
    import pyarrow
    import pyarrow.parquet

    try:
        table = pyarrow.parquet.ParquetFile(path)
    except (pyarrow.ArrowException, OSError) as e:
        raise DataError(f"{where}: not a readable parquet file ({e})") from None
    rows = (row for batch in table.iter_batches(batch_size=1024) for row in batch.to_pylist())
    for number, row in enumerate(rows, 1):
        yield f"{where}: row {number}", row


def _read_hub(spec: DatasetSpec, where: str) -> Iterator[tuple[str, Any]]:
    import datasets  # slow to import; only hub ids need it

    try:
        rows = datasets.load_dataset(spec.path, name=spec.subset, split=spec.split)
    except Exception as e:  # offline, gated, unknown id or split...: one actionable line for all
        raise DataError(f"{where}: cannot be loaded from the hub ({_short(e)}); "
                        "use a local file or check the id/network") from e
    for number, row in enumerate(rows, 1):
        yield f"{where}: row {number}", row


def _short(error: Exception) -> str:
    lines = str(error).strip().splitlines()
    reason = f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__
    return reason if len(reason) <= 160 else reason[:157] + "..."


_READERS = {".jsonl": _read_jsonl, ".json": _read_json, ".csv": _read_csv, ".parquet": _read_parquet}


# ---------------------------------------------------------------------------------------------
# Field checks shared by the formats

_KINDS = {str: "string", int: "number", float: "number", bool: "boolean", list: "list", dict: "object"}


def _kind(value: Any) -> str:
    return "null" if value is None else _KINDS.get(type(value), type(value).__name__)


def _require(record: dict, *keys: str) -> None:
    missing = [k for k in keys if k not in record]
    if missing:
        noun = "key" if len(missing) == 1 else "keys"
        found = ", ".join(map(str, record)) or "none"
        raise _Invalid(f"missing {noun} {', '.join(map(repr, missing))} (found: {found})")


def _string(record: dict, key: str) -> str:
    value = record[key]
    if not isinstance(value, str):
        raise _Invalid(f"'{key}' must be a string, got {_kind(value)}")
    if not value.strip():
        raise _Invalid(f"'{key}' is empty")
    return value


def _optional_string(record: dict, key: str) -> str:
    value = record.get(key, "")
    if not isinstance(value, str):
        raise _Invalid(f"'{key}' must be a string, got {_kind(value)}")
    return value


def _message(item: Any, where: str) -> dict:
    """One message, validated; extra keys (name, tool_calls...) are kept for chat templates."""
    if not isinstance(item, dict):
        raise _Invalid(f"{where} must be an object with role and content, got {_kind(item)}")
    role, content = item.get("role"), item.get("content")
    if role not in ROLES:
        raise _Invalid(f"{where}: invalid role {role!r} (expected one of {', '.join(ROLES)})")
    calls_tools = role == "assistant" and bool(item.get("tool_calls"))
    if content is None and calls_tools:  # OpenAI tool-call turns may carry no text
        content = ""
    if not isinstance(content, str):
        raise _Invalid(f"{where}: content must be a string, got {_kind(content)}")
    if role in ("user", "assistant") and not content.strip() and not calls_tools:
        raise _Invalid(f"{where}: empty {role} content")
    return {**{k: v for k, v in item.items() if v is not None}, "role": role, "content": content}


def _messages(value: Any, name: str) -> list[dict]:
    if not isinstance(value, list):
        raise _Invalid(f"'{name}' must be a list of messages, got {_kind(value)}")
    if not value:
        raise _Invalid(f"'{name}' is empty")
    return [_message(item, f"{name}[{i}]") for i, item in enumerate(value)]


def _has_user(messages: list[dict], name: str) -> list[dict]:
    if not any(m["role"] == "user" for m in messages):
        raise _Invalid(f"'{name}' has no user message")
    return messages


def _ends_with_assistant(messages: list[dict], name: str) -> list[dict]:
    if not messages or messages[-1]["role"] != "assistant":
        last = f"'{messages[-1]['role']}'" if messages else "nothing"
        raise _Invalid(f"'{name}' must end with an assistant message, not {last}")
    return messages


def _conversation(messages: list[dict], name: str) -> list[dict]:
    return _ends_with_assistant(_has_user(messages, name), name)


def _as_messages(value: Any, name: str, role: str) -> list[dict]:
    """A plain string is shorthand for a single `role` message."""
    if isinstance(value, str):
        if not value.strip():
            raise _Invalid(f"'{name}' is empty")
        return [{"role": role, "content": value}]
    if isinstance(value, list):
        return _messages(value, name)
    raise _Invalid(f"'{name}' must be a string or a list of messages, got {_kind(value)}")


def _answer(value: Any) -> Optional[str]:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise _Invalid(f"'answer' must be a string or number, got {_kind(value)}")
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
        raise _Invalid(f"'conversations' must be a list of turns, got {_kind(turns)}")
    messages = []
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict):
            raise _Invalid(f"conversations[{i}] must be an object with from and value, got {_kind(turn)}")
        role = _SPEAKERS.get(turn.get("from"))
        if role is None:
            raise _Invalid(f"conversations[{i}]: unknown speaker {turn.get('from')!r} "
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
        raise _Invalid("chosen and rejected share no prompt messages; add a 'prompt' key")
    return chosen[:n], chosen[n:], rejected[n:]


def _preference(record: dict) -> dict:
    implicit_prompt = "prompt" not in record and isinstance(record.get("chosen"), list)
    _require(record, *(("chosen", "rejected") if implicit_prompt else ("prompt", "chosen", "rejected")))
    chosen = _as_messages(record["chosen"], "chosen", "assistant")
    rejected = _as_messages(record["rejected"], "rejected", "assistant")
    if chosen == rejected:
        raise _Invalid("chosen and rejected are identical")
    if implicit_prompt:
        prompt, chosen, rejected = _shared_prompt(chosen, rejected)
    else:
        prompt = _as_messages(record["prompt"], "prompt", "user")
    return {"prompt": _has_user(prompt, "prompt"), "chosen": _ends_with_assistant(chosen, "chosen"),
            "rejected": _ends_with_assistant(rejected, "rejected")}


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
        reply, messages = messages[-1]["content"], messages[:-1]
    answer = _answer(record["answer"]) if "answer" in record else reply
    rest = {k: v for k, v in record.items() if k != "messages"}
    return {**rest, "prompt": _has_user(messages, "messages"), "answer": answer}


def _gsm8k(record: dict) -> dict:
    _require(record, "question", "answer")
    question, answer = _string(record, "question"), _string(record, "answer")
    target = gsm8k_target(answer)
    if target is None:
        raise _Invalid("'answer' has no number after '####'")
    return {"question": question, "answer": answer, "target": target}


def _text(record: dict) -> dict:
    _require(record, "text")
    return {"text": _string(record, "text")}


def _instruct(record: dict) -> dict:
    """A prompt with a verifiable check (pipeline/evaluation/scoring/instruction_checks.py) and an optional reference answer."""
    from pipeline.evaluation.scoring.instruction_checks import validate_spec

    _require(record, "prompt", "check")
    prompt = _string(record, "prompt")
    if not isinstance(record["check"], dict):
        raise _Invalid(f"'check' must be an object {{type, ...}}, got {_kind(record['check'])}")
    problem = validate_spec(record["check"])
    if problem:
        raise _Invalid(f"check: {problem}")
    reference = _optional_string(record, "reference") if "reference" in record else None
    return {**record, "prompt": prompt, "reference": reference}


_CONVERTERS: dict[str, dict[str, Callable[[dict], dict]]] = {
    "sft": {"messages": _sft_from_messages, "alpaca": _sft_from_alpaca, "sharegpt": _sft_from_sharegpt},
    "preference": {"preference": _preference},
    "prompt": {"prompt": _prompt_from_prompt, "gsm8k": _prompt_from_gsm8k, "messages": _prompt_from_messages},
    "gsm8k": {"gsm8k": _gsm8k},
    "text": {"text": _text},
    "instruct": {"prompt": _instruct},
}
