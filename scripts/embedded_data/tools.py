"""Mock tools (deterministic, so evaluation can execute them): the tool messages the data trains on."""
from __future__ import annotations

import json
import re
import zlib

from embedded_data.vocab import EN_CONDITIONS, KNOWLEDGE, ZH_CITIES, ZH_CONDITIONS, ZH_QUERY_TO_KEY


def weather_of(city: str) -> dict:
    h = zlib.crc32(city.encode("utf-8"))
    zh = city in ZH_CITIES
    cond = (ZH_CONDITIONS if zh else EN_CONDITIONS)[h % 6]
    return {"city": city, "temp": 5 + (h >> 3) % 31, "condition": cond, "humidity": 20 + (h >> 9) % 71}


def calc(expression: str) -> int:
    if not re.fullmatch(r"[0-9+\-* ()]+", expression):
        raise ValueError(f"unsupported expression {expression!r}")
    return int(eval(expression, {"__builtins__": {}}, {}))  # noqa: S307 (digits and + - * only)


def execute_tool(name: str, arguments: dict) -> str:
    """The mock tools of the embedded data (same names as seed 000): returns the tool message text."""
    if name == "calculator":
        try:
            return json.dumps({"result": calc(str(arguments.get("expression", "")))})
        except Exception as e:  # noqa: BLE001
            return json.dumps({"error": str(e)})
    if name == "get_weather":
        w = weather_of(str(arguments.get("city", "")))
        return json.dumps({k: w[k] for k in ("temp", "condition", "humidity")}, ensure_ascii=False)
    if name == "search_knowledge":
        q = str(arguments.get("query", ""))
        if q in KNOWLEDGE:  # English query: English answer
            return json.dumps({"result": KNOWLEDGE[q][0]})
        if q in ZH_QUERY_TO_KEY:  # Chinese query: Chinese answer
            return json.dumps({"result": KNOWLEDGE[ZH_QUERY_TO_KEY[q]][1]}, ensure_ascii=False)
        return json.dumps({"result": "not found"})
    return json.dumps({"error": "unknown tool"})


def tool_call_text(name: str, arguments: dict) -> str:
    return "<tool_call>" + json.dumps({"name": name, "arguments": arguments}, ensure_ascii=False) + "</tool_call>"
