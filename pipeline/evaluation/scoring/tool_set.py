"""The tools of the tool-calling eval, deterministic and offline.

There are three tools, under the names the embedded data uses (`embedded/data/test_tools.jsonl`,
the tool turns of `sft_train.jsonl`), and they return the same tool messages as the data's generator
(`scripts/embedded_data/tools.py`), so a model trained on that data sees what it learnt:

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
"""
from __future__ import annotations

import ast
import json
import math
import operator
import unicodedata
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from pipeline.data.problems import kind_name

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
        raise CalculatorError(f"expression must be a string, got {kind_name(expression)}")
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
# The stand-in weather table (the readings scripts/embedded_data/tools.py generated) and the knowledge base
# (scripts/embedded_data/vocab.py reads it from here to make the data)

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
        result = {"error": f"arguments must be an object, got {kind_name(arguments)}"}
    else:
        missing = [p for p in tool.required if p not in arguments]
        unexpected = [a for a in arguments if a not in tool.parameters["properties"]]
        if missing or unexpected:
            result = {"error": "; ".join([f"missing argument {m!r}" for m in missing]
                                         + [f"unexpected argument {u!r}" for u in unexpected])}
        else:
            result = tool.run(**arguments)
    return json.dumps(result, ensure_ascii=False)
