"""Tool calling in an agent loop (seed 000's optional part 3), deterministic and offline.

The tools are seed 000's three, under the names the embedded data uses (`embedded/data/test_tools.jsonl`,
the tool turns of `sft_train.jsonl`), and they return the same tool messages as the data's generator
(`scripts/embedded_data.execute_tool`), so a model trained on that data sees what it learnt:

    calculator        {"expression": "39 + 64 * 4"} -> {"result": 295}
                      Safe arithmetic over Python's ast (numbers, + - * / // % **, unary signs,
                      parentheses; x × ÷ and ^ are read as * / **); no eval, no names, no calls, no
                      attributes; bounded exponents and magnitudes. Errors come back as {"error": ...}.
    get_weather       {"city": "Madrid"} -> {"temp": 24, "condition": "cloudy", "humidity": 47}
                      A STAND-IN: a fixed table of 34 cities with canned readings, not a weather service.
                      An unknown city gives {"error": "unknown city ..."}.
    search_knowledge  {"query": "SFT"} -> {"result": "SFT is supervised fine-tuning ..."}
                      A fixed dict of 12 fine-tuning terms; an English key answers in English, its Chinese
                      query ("监督微调") in Chinese; else the longest key contained in the query; else
                      {"result": "not found"}.

A call is the assistant text `<tool_call>{"name": ..., "arguments": {...}}</tool_call>` (whitespace
around the JSON is fine; `arguments` may also be a JSON-encoded string, as OpenAI sends it).

The agent loop (`run_episode`) sends the conversation to the model; when the reply holds tool calls,
it appends the reply as an assistant turn and each call's result as a `{"role": "tool", "content":
<result JSON>}` turn, then asks again; it stops at a reply without a call (the final answer) or after
`max_turns` replies. The tool turn is role "tool" with the bare result JSON because that is what the
embedded data trains on (sft_train.jsonl: user, assistant `<tool_call>...`, tool `{"result": 528}`,
assistant final) and what seed 000 sends; chat templates that want a `<tool_response>` wrapper
(Qwen) add it themselves when they render a "tool" message.

`score_tools(records, episodes)` compares episodes with the records of test_tools.jsonl
({prompt, tool, arguments, answer?, lang?}); `load_tool_cases(path)` reads and checks such a file.
"""
from __future__ import annotations

import ast
import json
import math
import operator
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from pipeline.data.datasets import (
    DataError,
    _display,
    _existing_file,
    _Invalid,
    _kind,
    _read_json,
    _read_jsonl,
    _summarise,
)
from pipeline.evaluation.answers import extract_answer, normalize_number
from pipeline.evaluation.scoring.reasoning import split_think

# ---------------------------------------------------------------------------------------------
# Calculator: arithmetic over the ast, nothing else

MAX_EXPRESSION_CHARS = 200
MAX_EXPONENT = 100
MAX_MAGNITUDE = 1e100

_BINARY: dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow,
}
_UNARY: dict[type, Callable[[Any], Any]] = {ast.USub: operator.neg, ast.UAdd: operator.pos}
_SYMBOLS = {"×": "*", "÷": "/", "^": "**"}


class CalculatorError(ValueError):
    """An expression the calculator does not evaluate (not arithmetic, too large, division by zero)."""


def calculate(expression: str) -> int | float:
    """The value of an arithmetic expression; integral results are ints ("6 / 2" -> 3)."""
    if not isinstance(expression, str):
        raise CalculatorError(f"expression must be a string, got {_kind(expression)}")
    text = " ".join(unicodedata.normalize("NFKC", expression).split())  # a newline would end the expression
    for symbol, python in _SYMBOLS.items():
        text = text.replace(symbol, python)
    if not text:
        raise CalculatorError("empty expression")
    if len(text) > MAX_EXPRESSION_CHARS:
        raise CalculatorError(f"expression longer than {MAX_EXPRESSION_CHARS} characters")
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError:
        raise CalculatorError(f"not an arithmetic expression: {expression!r}") from None
    value = _evaluate(tree.body)
    if isinstance(value, float):
        value = round(value, 12)
        if value.is_integer():
            return int(value)
    return value


def _evaluate(node: ast.AST) -> int | float:
    if isinstance(node, ast.Constant):
        if isinstance(node.value, bool) or not isinstance(node.value, (int, float)):
            raise CalculatorError(f"only numbers are allowed, got {node.value!r}")
        return _bounded(node.value)
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_evaluate(node.operand))
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _evaluate(node.left), _evaluate(node.right)
        if isinstance(node.op, ast.Pow) and abs(right) > MAX_EXPONENT:
            raise CalculatorError(f"exponent larger than {MAX_EXPONENT}")
        try:
            return _bounded(_BINARY[type(node.op)](left, right))
        except ZeroDivisionError:
            raise CalculatorError("division by zero") from None
        except OverflowError:
            raise CalculatorError("result too large") from None
    raise CalculatorError(f"not allowed in an arithmetic expression: {type(node).__name__}")


def _bounded(value: Any) -> int | float:
    if isinstance(value, complex):  # (-8) ** 0.5
        raise CalculatorError("complex result")
    if (isinstance(value, float) and not math.isfinite(value)) or abs(value) > MAX_MAGNITUDE:
        raise CalculatorError("result too large")
    return value


# ---------------------------------------------------------------------------------------------
# The stand-in weather table (the readings scripts/embedded_data.py generated) and the knowledge base
# (scripts/embedded_data.py reads it from here to make the data)

# city -> (temperature °C, condition, humidity %): canned readings, not real weather.
WEATHER: dict[str, tuple[int, str, int]] = {
    "Paris": (6, "rainy", 35), "London": (31, "snowy", 48), "Tokyo": (31, "rainy", 90),
    "Berlin": (29, "cloudy", 38), "Rome": (23, "cloudy", 59), "Sydney": (28, "foggy", 71),
    "Cairo": (9, "foggy", 70), "Moscow": (29, "windy", 56), "Toronto": (28, "rainy", 88),
    "Madrid": (24, "cloudy", 47), "Seoul": (26, "rainy", 31), "Beijing": (15, "snowy", 85),
    "Shanghai": (16, "windy", 83), "Lisbon": (18, "windy", 69), "Vienna": (8, "windy", 46),
    "Dublin": (15, "snowy", 79), "Oslo": (6, "foggy", 55), "Lima": (33, "rainy", 44),
    "北京": (18, "大风", 27), "上海": (10, "大风", 59), "深圳": (11, "小雨", 64), "广州": (32, "小雨", 32),
    "杭州": (30, "晴", 67), "成都": (20, "大风", 52), "南京": (15, "大风", 22), "武汉": (17, "多云", 60),
    "西安": (29, "小雨", 28), "重庆": (32, "大风", 28), "天津": (22, "小雨", 86), "苏州": (18, "小雪", 86),
    "长沙": (34, "多云", 85), "青岛": (34, "有雾", 68), "厦门": (14, "小雨", 28), "昆明": (27, "多云", 73),
}

# English key -> (English answer, Chinese answer, Chinese query)
KNOWLEDGE: dict[str, tuple[str, str, str]] = {
    "LoRA": ("LoRA trains two small low-rank matrices beside each frozen weight matrix.",
             "LoRA在冻结的权重旁训练两个低秩小矩阵。", "LoRA微调"),
    "QLoRA": ("QLoRA trains LoRA adapters on top of a 4-bit NF4 quantized model.",
              "QLoRA在4位NF4量化的模型上训练LoRA适配器。", "QLoRA微调"),
    "DPO": ("DPO aligns a model on pairs of chosen and rejected answers without a reward model.",
            "DPO用选中和拒绝的回答对来对齐模型，不需要奖励模型。", "直接偏好优化"),
    "GRPO": ("GRPO samples a group of answers per prompt and uses their normalized rewards as advantages.",
             "GRPO对每个提示采样一组回答，用组内标准化的奖励作为优势。", "GRPO算法"),
    "SFT": ("SFT is supervised fine-tuning on example conversations.", "SFT是在示例对话上的监督微调。", "监督微调"),
    "quantization": ("Quantization stores weights with fewer bits to save memory.",
                     "量化用更少的位数存储权重来节省显存。", "量化"),
    "GGUF": ("GGUF is the model file format used by llama.cpp.", "GGUF是llama.cpp使用的模型文件格式。", "GGUF格式"),
    "perplexity": ("Perplexity is the exponential of the average negative log-likelihood per token.",
                   "困惑度是每个词元平均负对数似然的指数。", "困惑度"),
    "distillation": ("Distillation trains a small student model to match a large teacher model.",
                     "蒸馏训练一个小的学生模型去模仿大的教师模型。", "蒸馏"),
    "KV cache": ("The KV cache keeps past keys and values so decoding does not recompute them.",
                 "KV缓存保存之前的键和值，解码时不用重新计算。", "KV缓存"),
    "RAG": ("RAG retrieves documents and puts them in the prompt before generation.",
            "RAG先检索文档，再把它们放进提示里生成。", "检索增强生成"),
    "tokenizer": ("A tokenizer splits text into tokens and maps them to ids.",
                  "分词器把文本切成词元并映射成编号。", "分词器"),
}


def _key(text: str) -> str:
    return " ".join(unicodedata.normalize("NFKC", text).split()).casefold()


_CITIES = {_key(c): c for c in WEATHER}
_QUERIES = {_key(k): v[0] for k, v in KNOWLEDGE.items()} | {_key(v[2]): v[1] for v in KNOWLEDGE.values()}


def _calculator(expression: str) -> dict:
    try:
        return {"result": calculate(expression)}
    except CalculatorError as e:
        return {"error": str(e)}


def _weather(city: str) -> dict:
    name = _CITIES.get(_key(str(city)))
    if name is None:
        return {"error": f"unknown city {city!r} (this stand-in knows {len(WEATHER)} cities)"}
    temp, condition, humidity = WEATHER[name]
    return {"temp": temp, "condition": condition, "humidity": humidity}


def _knowledge(query: str) -> dict:
    key = _key(str(query))
    if key in _QUERIES:
        return {"result": _QUERIES[key]}
    contained = [k for k in _QUERIES if k in key]
    return {"result": _QUERIES[max(contained, key=len)] if contained else "not found"}


# ---------------------------------------------------------------------------------------------
# Registry

@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    parameters: dict              # JSON schema of the arguments (an object of string properties)
    run: Callable[..., dict]      # keyword arguments -> a JSON-able result

    def schema(self) -> dict:
        """The OpenAI / chat-template tool description (`apply_chat_template(..., tools=[...])`)."""
        return {"type": "function", "function": {"name": self.name, "description": self.description,
                                                 "parameters": self.parameters}}

    @property
    def required(self) -> list[str]:
        return list(self.parameters.get("required", []))


def _string_params(**described: str) -> dict:
    return {"type": "object", "properties": {k: {"type": "string", "description": d} for k, d in described.items()},
            "required": list(described)}


TOOLS: dict[str, Tool] = {t.name: t for t in (
    Tool("calculator", "Evaluates an arithmetic expression (+ - * / // % ** and parentheses).",
         _string_params(expression="the expression, e.g. '2 + 3 * 4'"), _calculator),
    Tool("get_weather", "Returns the temperature, condition and humidity of a city (a fixed stand-in table).",
         _string_params(city="the city name"), _weather),
    Tool("search_knowledge", "Searches a small knowledge base of fine-tuning terms and returns a short answer.",
         _string_params(query="the term to look up"), _knowledge),
)}


def tool_schemas() -> list[dict]:
    return [t.schema() for t in TOOLS.values()]


def execute_tool(name: str, arguments: Any) -> str:
    """The tool message for a call: the tool's result as JSON (non-ASCII kept), or {"error": ...}."""
    tool = TOOLS.get(name) if isinstance(name, str) else None
    if tool is None:
        result = {"error": f"unknown tool {name!r} (known: {', '.join(TOOLS)})"}
    elif not isinstance(arguments, Mapping):
        result = {"error": f"arguments must be an object, got {_kind(arguments)}"}
    else:
        missing = [p for p in tool.required if p not in arguments]
        unexpected = [a for a in arguments if a not in tool.parameters["properties"]]
        if missing or unexpected:
            result = {"error": "; ".join([f"missing argument {m!r}" for m in missing]
                                         + [f"unexpected argument {u!r}" for u in unexpected])}
        else:
            result = tool.run(**arguments)
    return json.dumps(result, ensure_ascii=False)


# ---------------------------------------------------------------------------------------------
# Parsing calls

TOOL_CALL_OPEN, TOOL_CALL_CLOSE = "<tool_call>", "</tool_call>"
_CALL = re.compile(re.escape(TOOL_CALL_OPEN) + r"(.*?)" + re.escape(TOOL_CALL_CLOSE), re.DOTALL)


def format_tool_call(name: str, arguments: Mapping) -> str:
    """The assistant text of one call, as the embedded data writes it."""
    return TOOL_CALL_OPEN + json.dumps({"name": name, "arguments": dict(arguments)}, ensure_ascii=False) \
        + TOOL_CALL_CLOSE


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


def parse_tool_call(text: str) -> dict | None:
    """The first call {"name", "arguments"} of `<tool_call>{json}</tool_call>`; None when there is no
    block or its JSON is invalid."""
    _, visible = split_think(text)
    match = _CALL.search(visible)
    return _call(match.group(1)) if match else None


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
        name_ok = first is not None and first["name"] == record["tool"]
        args_ok = first is not None and normalize_arguments(first["arguments"]) == normalize_arguments(record["arguments"])
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
        raise _Invalid(f"expected a JSON object, got {_kind(item)}")
    missing = [k for k in ("prompt", "tool", "arguments") if k not in item]
    if missing:
        raise _Invalid(f"missing key(s) {', '.join(map(repr, missing))} (found: {', '.join(item) or 'none'})")
    if not isinstance(item["prompt"], str) or not item["prompt"].strip():
        raise _Invalid(f"'prompt' must be a non-empty string, got {_kind(item['prompt'])}")
    tool = TOOLS.get(item["tool"]) if isinstance(item["tool"], str) else None
    if tool is None:
        raise _Invalid(f"'tool': unknown tool {item['tool']!r} (known: {', '.join(TOOLS)})")
    args = item["arguments"]
    if not isinstance(args, dict):
        raise _Invalid(f"'arguments' must be an object, got {_kind(args)}")
    missing = [p for p in tool.required if p not in args]
    unexpected = [a for a in args if a not in tool.parameters["properties"]]
    if missing or unexpected:
        problems = [f"missing {m!r}" for m in missing] + [f"unexpected {u!r}" for u in unexpected]
        raise _Invalid(f"'arguments' for {tool.name}: {', '.join(problems)}")
    bad = [k for k, v in args.items() if not isinstance(v, str) or not v.strip()]
    if bad:
        raise _Invalid(f"'arguments.{bad[0]}' must be a non-empty string, got {_kind(args[bad[0]])}")
    for key in ("answer", "lang"):
        if item.get(key) is not None and not isinstance(item[key], str):
            raise _Invalid(f"'{key}' must be a string, got {_kind(item[key])}")
    return {**item, "answer": item.get("answer")}


def load_tool_cases(path: str | Path) -> list[dict]:
    """Tool-call test cases from a .jsonl (or .json list) file: {prompt, tool, arguments, answer?, lang?},
    `tool` one of TOOLS with its required arguments. Raises DataError with one `path:line: reason` per
    bad record (the first few)."""
    resolved = _existing_file(str(path))
    where = _display(resolved)
    suffix = resolved.suffix.lower()
    if suffix not in (".jsonl", ".json"):
        raise DataError(f"{where}: tool cases must be .jsonl or .json, got '{resolved.suffix}'")
    reader = _read_jsonl if suffix == ".jsonl" else _read_json
    cases, errors = [], []
    for location, item in reader(resolved, where):
        try:
            if isinstance(item, _Invalid):
                raise item
            cases.append(_case(item))
        except _Invalid as e:
            errors.append(f"{location}: {e}")
    if errors:
        raise DataError(_summarise(errors))
    if not cases:
        raise DataError(f"{where}: empty file (no records)")
    return cases
