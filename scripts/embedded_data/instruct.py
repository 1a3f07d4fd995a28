"""Instructions with checkable formats (JSON, word counts, lists, questions) and their checks."""
from __future__ import annotations

import json

from embedded_data.numbers import en_number
from embedded_data.problems import _cap, _person
from embedded_data.vocab import (
    CATEGORIES,
    EN_ANIMALS,
    EN_CITIES,
    EN_COLORS,
    EN_COUNTRIES,
    EN_FOODS,
    EN_JOBS,
    EN_OBJECTS,
    JSON_KEYS,
    ZH_ANIMALS,
    ZH_CITIES,
    ZH_COLORS,
    ZH_COUNTRIES,
    ZH_FOODS,
    ZH_FRUITS,
    ZH_JOBS,
    ZH_OBJECTS,
)


def _json_value(rng, key, lang):
    zh = lang == "zh"
    if key == "name":
        return _person(rng, lang)[0]
    if key == "city":
        return rng.choice(ZH_CITIES if zh else EN_CITIES)
    if key == "age":
        return rng.randint(5, 80)
    if key == "color":
        return rng.choice(ZH_COLORS if zh else EN_COLORS)
    if key == "food":
        return rng.choice(ZH_FOODS if zh else EN_FOODS)
    if key == "animal":
        return rng.choice(ZH_ANIMALS if zh else EN_ANIMALS)
    if key == "job":
        return rng.choice(ZH_JOBS if zh else EN_JOBS)
    if key == "country":
        return rng.choice(ZH_COUNTRIES if zh else EN_COUNTRIES)
    if key == "score":
        return rng.randint(0, 100)
    if key == "year":
        return rng.randint(1990, 2025)
    if key == "price":
        return rng.randint(1, 99)
    if key == "item":
        return rng.choice(ZH_OBJECTS)[1] if zh else rng.choice(EN_OBJECTS)[0]
    raise ValueError(key)


def _join_en(items):
    items = [f'"{k}"' for k in items]
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _join_zh(items):
    items = [f'"{k}"' for k in items]
    return items[0] if len(items) == 1 else "、".join(items[:-1]) + "和" + items[-1]


def json_task(rng, lang):
    keys = rng.sample(JSON_KEYS, rng.randint(2, 4))
    obj = {k: _json_value(rng, k, lang) for k in keys}
    if lang == "en":
        prompt = rng.choice([
            "Write a JSON object with the keys {k}.",
            "Give me a JSON object that has the keys {k}.",
            "Return only a JSON object with the keys {k}.",
            "Make a JSON object with exactly these keys: {k}.",
        ]).format(k=_join_en(keys))
    else:
        prompt = rng.choice([
            "写一个JSON对象，包含键{k}。",
            "请输出一个只有{k}这些键的JSON对象。",
            "给我一个JSON对象，键是{k}。",
            "生成一个JSON对象，必须包含{k}这几个键。",
        ]).format(k=_join_zh(keys))
    return prompt, json.dumps(obj, ensure_ascii=False), {"type": "json_keys", "keys": keys}, obj


_EN_SUBJECTS = [(lambda n, a: [n]), (lambda n, a: ["The", a]), (lambda n, a: ["My", a])]
_EN_PREDICATES = [["likes", "{objs}"], ["reads", "a", "book"], ["plays", "in", "the", "park"], ["runs"],
                  ["sings"], ["is", "happy"], ["is", "very", "happy"], ["eats", "{objs}"], ["sleeps"],
                  ["walks", "to", "school"], ["draws", "a", "picture"], ["swims", "in", "the", "lake"],
                  ["has", "{a_num}", "{objs}"], ["jumps", "high"], ["smiles"]]
_EN_SUFFIXES = [[], ["today"], ["every", "day"], ["at", "home"], ["in", "the", "morning"], ["with", "{n2}"],
                ["after", "lunch"], ["again"], ["every", "evening", "too"]]


def _en_sentence(rng, n_words):
    for _ in range(1000):
        name, _, _ = _person(rng, "en")
        animal = rng.choice(EN_ANIMALS)
        subj_kind = rng.randrange(3)
        subj = _EN_SUBJECTS[subj_kind](name, animal)
        words = subj + rng.choice(_EN_PREDICATES) + rng.choice(_EN_SUFFIXES)
        if len(words) != n_words:
            continue
        objs = rng.choice(EN_OBJECTS)[1]
        n2 = _person(rng, "en", exclude=(name,))[0]
        words = [w.format(objs=objs, n2=n2, a_num=en_number(rng.randint(2, 9))) for w in words]
        # "toy cars" adds a word: recount and retry on mismatch
        text = " ".join(words)
        if len(text.split()) != n_words:
            continue
        topic = name if subj_kind == 0 else f"a {animal}" if subj_kind == 1 else f"my {animal}"
        return _cap(text) + ".", topic
    raise RuntimeError("no sentence")


_ZH_PREDICATES = ["喜欢吃苹果", "在公园里玩", "很高兴", "在看书", "跑得很快", "唱歌", "睡觉", "喜欢画画",
                  "去学校", "在河里游泳", "笑了", "吃饭", "很聪明", "在写作业", "喜欢{o}"]
_ZH_ADVERBS = ["", "今天", "每天", "早上", "下午", "也", "又"]


def zh_char_count(text: str) -> int:
    """Chinese 'word count' = number of CJK characters (punctuation, digits and latin are not counted)."""
    return sum(1 for ch in text if "\u4e00" <= ch <= "\u9fff")


def _zh_sentence(rng, n_chars):
    for _ in range(1000):
        if rng.random() < 0.5:
            subj = _person(rng, "zh")[0]
            topic = subj
        else:
            animal = rng.choice(ZH_ANIMALS)
            subj = ("小" + animal) if len(animal) == 1 else animal
            topic = subj
        pred = rng.choice(_ZH_PREDICATES).format(o=rng.choice(ZH_FRUITS))
        text = subj + rng.choice(_ZH_ADVERBS) + pred + "。"
        if zh_char_count(text) == n_chars:
            return text, topic
    raise RuntimeError("no sentence")


def word_count_task(rng, lang):
    if lang == "en":
        n = rng.randint(3, 8)
        sent, topic = _en_sentence(rng, n)
        prompt = rng.choice([
            "Write a sentence about {t} with exactly {n} words.",
            "Write one sentence of exactly {n} words about {t}.",
            "Describe {t} in exactly {n} words.",
            "Use exactly {n} words to write a sentence about {t}.",
        ]).format(t=topic, n=n)
        return prompt, sent, {"type": "word_count", "n": n, "unit": "word"}, sent
    n = rng.randint(4, 9)
    sent, topic = _zh_sentence(rng, n)
    prompt = rng.choice([
        "写一句关于{t}的话，正好{n}个字。",
        "用正好{n}个字写一句关于{t}的句子。",
        "请写一个{n}个字的句子，内容关于{t}。",
        "写一句话描述{t}，字数必须是{n}个。",
    ]).format(t=topic, n=n)
    return prompt, sent, {"type": "word_count", "n": n, "unit": "char"}, sent


def list_task(rng, lang):
    cat_en, cat_zh, items_en, items_zh = rng.choice(CATEGORIES)
    n = rng.randint(2, 6)
    items = rng.sample(items_en if lang == "en" else items_zh, n)
    body = "\n".join(f"{i + 1}. {x}" for i, x in enumerate(items))
    if lang == "en":
        prompt = rng.choice([
            "List {n} {c}.", "Name {n} {c} as a numbered list.", "Give me a list of {n} {c}.",
            "Write a numbered list of exactly {n} {c}.",
        ]).format(n=n, c=cat_en)
    else:
        prompt = rng.choice([
            "列出{n}{c}。", "用编号列表写出{n}{c}。", "请列举{n}{c}，每行一个。", "写一个正好{n}项的列表，内容是{c}。",
        ]).format(n=n, c=cat_zh)
    return prompt, body, {"type": "list_items", "n": n}, items


def _statement_en(rng):
    name, he, _ = _person(rng, "en")
    animal = rng.choice(EN_ANIMALS)
    objs = rng.choice(EN_OBJECTS)[1]
    adj = rng.choice(["happy", "tired", "busy", "hungry", "ready", "late", "tall", "kind", "at home", "in the garden"])
    verb = rng.choice(["swim", "sing", "cook", "read", "dance", "ride a bike", "play chess", "draw"])
    place = rng.choice(["park", "zoo", "market", "library", "beach", "school", "museum"])
    city = rng.choice(EN_CITIES)
    t = rng.randrange(7)
    return [
        (f"{name} is {adj}.", f"Is {name} {adj}?"),
        (f"{name} can {verb}.", f"Can {name} {verb}?"),
        (f"{name} likes {objs}.", f"Does {name} like {objs}?"),
        (f"{name} has a {animal}.", f"Does {name} have a {animal}?"),
        (f"{name} went to the {place}.", f"Did {name} go to the {place}?"),
        (f"{name} will visit {city}.", f"Will {name} visit {city}?"),
        (f"The {animal} is {adj}.", f"Is the {animal} {adj}?"),
    ][t]


def _statement_zh(rng):
    name = _person(rng, "zh")[0]
    animal = rng.choice(ZH_ANIMALS)
    fruit = rng.choice(ZH_FRUITS)
    adj = rng.choice(["高兴", "累", "忙", "饿", "聪明", "认真", "开心", "安静"])
    verb = rng.choice(["游泳", "唱歌", "做饭", "跳舞", "骑车", "下棋", "画画", "写字"])
    place = rng.choice(["公园", "动物园", "超市", "图书馆", "海边", "学校", "博物馆"])
    city = rng.choice(ZH_CITIES)
    t = rng.randrange(6)
    s = [
        f"{name}很{adj}。", f"{name}会{verb}。", f"{name}喜欢吃{fruit}。", f"{name}有一只{animal}。",
        f"{name}去了{place}。", f"{name}明天去{city}。",
    ][t]
    return s, s[:-1] + "吗？"


def question_task(rng, lang):
    if lang == "en":
        s, qn = _statement_en(rng)
        prompt = rng.choice([
            "Rewrite this sentence as a question: {s}", "Turn this statement into a yes/no question: {s}",
            "Change the sentence into a question: {s}", "Make a question from this sentence: {s}",
        ]).format(s=s)
    else:
        s, qn = _statement_zh(rng)
        prompt = rng.choice([
            "把这句话改写成问句：{s}", "请将下面的陈述句改成疑问句：{s}", "把下面的句子变成一个问题：{s}",
            "改写成问句：{s}",
        ]).format(s=s)
    return prompt, qn, {"type": "question", "expected": qn}, (s, qn)


INSTRUCT_KINDS = {"json_keys": json_task, "word_count": word_count_task, "list_items": list_task,
                  "question": question_task}


def make_instruct(rng, lang, kind=None):
    kind = kind or rng.choice(list(INSTRUCT_KINDS))
    prompt, answer, check, raw = INSTRUCT_KINDS[kind](rng, lang)
    return kind, prompt, answer, check, raw
