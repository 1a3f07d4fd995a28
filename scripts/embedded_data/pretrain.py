"""Pretraining documents: plain text, no chat format, no '#### N' answers."""
from __future__ import annotations

import json
import random

from embedded_data.instruct import _en_sentence, _zh_sentence, make_instruct
from embedded_data.numbers import en_number, zh_number
from embedded_data.problems import _apply, _cap, make_problem
from embedded_data.tool_cases import make_tool
from embedded_data.vocab import CATEGORIES, normalize


def _fact(rng, lang):
    op = rng.choice(["+", "+", "-", "*"])
    if op == "*":
        a, b = rng.randint(1, 9), rng.randint(1, 9)
    elif op == "+":
        a, b = rng.randint(0, 40), rng.randint(0, 20)
        if rng.random() < 0.3:
            a = rng.randint(20, 81)
    else:
        a = rng.randint(1, 100) if rng.random() < 0.3 else rng.randint(1, 40)
        b = rng.randint(0, min(a, 20))
    r = _apply(a, op, b)
    style = rng.random()
    if style < 0.6:
        return f"{a} {op} {b} = {r}"
    if lang == "en":
        w = {"+": "plus", "-": "minus", "*": "times"}[op]
        if style < 0.8:
            return f"{a} {w} {b} equals {r}."
        return f"{_cap(en_number(a))} {w} {en_number(b)} is {en_number(r)}."
    w = {"+": "加", "-": "减", "*": "乘"}[op]
    if style < 0.8:
        return f"{a} {w} {b} 等于 {r}。"
    return f"{zh_number(a)}{w}{zh_number(b)}等于{zh_number(r)}。"


def doc_facts(rng, lang):
    n = rng.randint(8, 24)
    head = rng.choice(["", "", "Arithmetic practice:\n", "Math facts:\n"] if lang == "en" else ["", "", "口算练习：\n", "算术：\n"])
    return head + "\n".join(_fact(rng, lang) for _ in range(n))


def doc_problems(rng, lang, held, keys, two_op_p=0.45):
    """A worksheet of word problems, each followed by its narrative solution."""
    n = rng.randint(3, 7)
    out = []
    style = rng.randrange(3)
    i = 0
    while len(out) < n:
        p = make_problem(rng, lang, two_op_p=two_op_p)
        k = normalize(p.question)
        if k in held:
            continue
        keys.add(k)
        i += 1
        if style == 0:
            out.append(f"{p.question} {p.narrative}" if lang == "en" else p.question + p.narrative)
        elif style == 1:
            out.append(f"{p.question}\n{p.narrative}")
        else:
            if lang == "en":
                out.append(f"Problem {i}. {p.question}\nSolution: {p.narrative}")
            else:
                out.append(f"第{i}题：{p.question}\n解：{p.narrative}")
    return "\n\n".join(out) if style else "\n".join(out)


def doc_json(rng, lang, held, keys):
    out = []
    for _ in range(rng.randint(2, 5)):
        _, prompt, answer, check, obj = make_instruct(rng, lang, "json_keys")
        ks = check["keys"]
        if lang == "en":
            intro = rng.choice([f"A record with the fields {', '.join(ks)}:", "Example record:",
                                f"The JSON object below has {len(ks)} keys: {', '.join(ks)}.", "Data:"])
        else:
            intro = rng.choice([f"一条包含{'、'.join(ks)}字段的记录：", "示例数据：", f"下面的JSON对象有{len(ks)}个键。", "数据："])
        out.append(intro + "\n" + answer)
    return "\n\n".join(out)


def doc_lists(rng, lang, held, keys):
    out = []
    for _ in range(rng.randint(2, 4)):
        _, prompt, body, check, items = make_instruct(rng, lang, "list_items")
        n = check["n"]
        cat = [c for c in CATEGORIES if items[0] in (c[2] if lang == "en" else c[3])][0]
        if lang == "en":
            head = rng.choice([f"{_cap(en_number(n))} {cat[0]}:", f"Here are {n} {cat[0]}:", f"My list of {cat[0]}:"])
        else:
            head = rng.choice([f"{zh_number(n)}{cat[1]}：", f"这里有{n}{cat[1]}：", f"{cat[1][1:]}清单："])
        out.append(head + "\n" + body)
    return "\n\n".join(out)


def doc_sentences(rng, lang, held, keys):
    out = []
    for _ in range(rng.randint(3, 8)):
        t = rng.randrange(3)
        if t == 0:
            _, prompt, s, check, _ = make_instruct(rng, lang, "word_count")
            n = check["n"]
            out.append(f"A sentence with {n} words: {s}" if lang == "en" else f"一个{n}个字的句子：{s}")
        elif t == 1:
            _, prompt, qn, _, (s, _) = make_instruct(rng, lang, "question")
            if lang == "en":
                out.append(rng.choice([f"{s} {qn} Yes, {s[0].lower() + s[1:]}", f"Statement: {s}\nQuestion: {qn}"]))
            else:
                out.append(rng.choice([f"{s}{qn}是的，{s}", f"陈述句：{s}\n问句：{qn}"]))
        else:
            if lang == "en":
                out.append(_en_sentence(rng, rng.randint(3, 8))[0] + " " + _en_sentence(rng, rng.randint(3, 8))[0])
            else:
                out.append(_zh_sentence(rng, rng.randint(4, 9))[0] + _zh_sentence(rng, rng.randint(4, 9))[0])
    return "\n".join(out)


def doc_tools(rng, lang, held, keys):
    out = []
    if rng.random() < 0.4:
        out.append(rng.choice([
            "Tools: calculator takes an expression and returns the result. get_weather takes a city and returns "
            "the temperature, the condition and the humidity. search_knowledge takes a query and returns a short answer.",
            "A tool call is a JSON object with a name and arguments.",
        ]) if lang == "en" else rng.choice([
            "工具：calculator 计算一个表达式并返回结果。get_weather 返回一个城市的温度、天气和湿度。search_knowledge 在知识库里搜索并返回简短的答案。",
            "调用工具时写一个JSON对象，包含 name 和 arguments。",
        ]))
    for _ in range(rng.randint(2, 5)):
        t = make_tool(rng, lang)
        k = normalize(t["prompt"])
        if k in held:
            continue
        keys.add(k)
        call = json.dumps({"name": t["tool"], "arguments": t["arguments"]}, ensure_ascii=False)
        if lang == "en":
            out.append(rng.choice([
                f"Request: {t['prompt']}\nCall: {call}\nResult: {t['result']}\nReply: {t['final']}",
                f"To answer \"{t['prompt']}\" call {t['tool']} with {json.dumps(t['arguments'], ensure_ascii=False)}. "
                f"It returns {t['result']}. {t['final']}",
            ]))
        else:
            out.append(rng.choice([
                f"请求：{t['prompt']}\n调用：{call}\n结果：{t['result']}\n回复：{t['final']}",
                f"回答“{t['prompt']}”时，调用{t['tool']}，参数是{json.dumps(t['arguments'], ensure_ascii=False)}。"
                f"返回{t['result']}。{t['final']}",
            ]))
    return "\n\n".join(out)


DOC_MIX = [("problems", 0.50), ("facts", 0.14), ("json", 0.08), ("lists", 0.07), ("sentences", 0.11), ("tools", 0.10)]


def make_doc(rng, held, keys, kind=None):
    lang = "en" if rng.random() < 0.5 else "zh"
    if kind is None:
        x, acc = rng.random(), 0.0
        for kind, w in DOC_MIX:
            acc += w
            if x < acc:
                break
    if kind == "facts":
        return doc_facts(rng, lang), kind
    fn = {"problems": doc_problems, "json": doc_json, "lists": doc_lists, "sentences": doc_sentences,
          "tools": doc_tools}[kind]
    return fn(rng, lang, held, keys), kind


def pretrain_corpus(seed: int, n_chars: int, held: set, keys: set | None = None):
    """Yields documents until about n_chars characters; records item keys in `keys`."""
    rng = random.Random(seed * 7919 + 1)
    keys = set() if keys is None else keys
    total = 0
    while total < n_chars:
        doc, _ = make_doc(rng, held, keys)
        total += len(doc)
        yield doc
