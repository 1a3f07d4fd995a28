"""Tool-call conversations and held-out tool cases."""
from __future__ import annotations

from embedded_data.tools import calc, execute_tool, weather_of
from embedded_data.vocab import EN_CITIES, KNOWLEDGE, ZH_CITIES


def _expression(rng):
    t = rng.randrange(4)
    if t == 0:
        return f"{rng.randint(10, 99)} * {rng.randint(2, 99)}"
    if t == 1:
        return f"{rng.randint(10, 999)} + {rng.randint(10, 999)}"
    if t == 2:
        a = rng.randint(100, 999)
        return f"{a} - {rng.randint(10, a)}"
    return f"{rng.randint(10, 99)} + {rng.randint(10, 99)} * {rng.randint(2, 9)}"


def make_tool(rng, lang, tool=None):
    """Returns dict(prompt, tool, arguments, result (tool message), final (assistant reply))."""
    tool = tool or rng.choice(["calculator", "calculator", "get_weather", "search_knowledge"])
    if tool == "calculator":
        expr = _expression(rng)
        args = {"expression": expr}
        r = calc(expr)
        if lang == "en":
            prompt = rng.choice(["Use the calculator to work out {e}.", "What is {e}? Please use the calculator.",
                                 "Calculate {e} with the calculator tool.", "Please compute {e}."]).format(e=expr)
            final = f"{expr} = {r}"
        else:
            prompt = rng.choice(["请帮我计算 {e}。", "用计算器算一下 {e} 等于多少。", "{e} 等于多少？请用计算器。",
                                 "帮我算算 {e}。"]).format(e=expr)
            final = f"{expr} = {r}"
    elif tool == "get_weather":
        city = rng.choice(EN_CITIES if lang == "en" else ZH_CITIES)
        args = {"city": city}
        w = weather_of(city)
        if lang == "en":
            prompt = rng.choice(["What's the weather like in {c}?", "Is it raining in {c} today?",
                                 "How warm is it in {c} today?", "Check the weather in {c} for me."]).format(c=city)
            final = f"It is {w['condition']} in {city} today, {w['temp']} degrees, humidity {w['humidity']}%."
        else:
            prompt = rng.choice(["{c}今天天气怎么样？", "{c}现在的温度是多少？", "查一下{c}的天气。",
                                 "{c}今天下雨吗？"]).format(c=city)
            final = f"{city}今天{w['condition']}，气温{w['temp']}度，湿度{w['humidity']}%。"
    else:
        key = rng.choice(list(KNOWLEDGE))
        en, zh, zq = KNOWLEDGE[key]
        if lang == "en":
            q = key
            prompt = rng.choice(["Look up {q} in the knowledge base.", "What is {q}? Search the knowledge base.",
                                 "Search the knowledge base for {q}.", "Can you find out what {q} is?"]).format(q=q)
            final = en
        else:
            q = zq
            prompt = rng.choice(["帮我查一下{q}是什么？", "在知识库里搜索{q}。", "{q}是什么意思？请查知识库。",
                                 "查查知识库，{q}是什么？"]).format(q=q)
            final = zh
        args = {"query": q}
    return {"prompt": prompt, "tool": tool, "arguments": args, "result": execute_tool(tool, args),
            "final": final}
