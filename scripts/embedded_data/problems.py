"""Arithmetic word problems, English and Chinese, with narrative solutions and '#### N' answers."""
from __future__ import annotations

import random
import re
from dataclasses import dataclass

from embedded_data.vocab import (
    EN_CONTAINERS,
    EN_FEMALE,
    EN_MALE,
    EN_OBJECTS,
    EN_PLACES,
    ZH_CONTAINERS,
    ZH_FEMALE,
    ZH_MALE,
    ZH_OBJECTS,
    ZH_PLACES,
)


@dataclass
class Problem:
    question: str
    steps: list  # [(x, op, y, result)]
    narrative: str  # the solution told as a sentence (pretraining form)
    lang: str
    kind: str

    @property
    def answer(self) -> int:
        return self.steps[-1][3]

    def worked(self) -> str:
        """GSM8K-style target: one worked line per step, then '#### N'."""
        lines = [f"{x} {op} {y} = {r}" for x, op, y, r in self.steps]
        return "\n".join(lines) + f"\n#### {self.answer}"


def _apply(x, op, y):
    return x + y if op == "+" else x - y if op == "-" else x * y


def _person(rng, lang, exclude=()):
    if lang == "en":
        male = rng.random() < 0.5
        pool = [n for n in (EN_MALE if male else EN_FEMALE) if n not in exclude]
        return rng.choice(pool), ("he" if male else "she"), ("him" if male else "her")
    male = rng.random() < 0.5
    pool = [n for n in (ZH_MALE if male else ZH_FEMALE) if n not in exclude]
    return rng.choice(pool), ("他" if male else "她"), ("他" if male else "她")


_SINGULAR = {pl: sg for sg, pl in EN_OBJECTS + EN_CONTAINERS}
_ONE_RE = re.compile(r"(?<![\d.])\b1 (" + "|".join(sorted(_SINGULAR, key=len, reverse=True)) + r")\b")


def _singular(text):
    """'1 apples' -> '1 apple'."""
    return _ONE_RE.sub(lambda m: "1 " + _SINGULAR[m.group(1)], text)


def _cap(s):
    return s[:1].upper() + s[1:]


def _numbers(rng, kind):
    """Operands per problem kind. +/-: up to 20; x: single digits 2..9."""
    add = lambda: rng.randint(1, 20)  # noqa: E731
    if kind == "add":
        a, b = add(), add()
        return [(a, "+", b)]
    if kind == "sub":
        a = rng.randint(2, 20)
        b = rng.randint(1, a - 1)
        return [(a, "-", b)]
    if kind == "mul":
        return [(rng.randint(2, 9), "*", rng.randint(2, 9))]
    if kind == "add_sub":
        a, b = add(), add()
        c = rng.randint(1, min(20, a + b - 1))
        return [(a, "+", b), (None, "-", c)]
    if kind == "sub_add":
        a = rng.randint(2, 20)
        b = rng.randint(1, a - 1)
        return [(a, "-", b), (None, "+", add())]
    if kind == "add_add":
        return [(add(), "+", add()), (None, "+", add())]
    if kind == "sub_sub":
        a = rng.randint(3, 20)
        b = rng.randint(1, a - 2)
        c = rng.randint(1, a - b - 1)
        return [(a, "-", b), (None, "-", c)]
    if kind == "mul_add":
        return [(rng.randint(2, 9), "*", rng.randint(2, 9)), (None, "+", add())]
    if kind == "mul_sub":
        a, b = rng.randint(2, 9), rng.randint(2, 9)
        return [(a, "*", b), (None, "-", rng.randint(1, min(20, a * b - 1)))]
    raise ValueError(kind)


ONE_OP = ["add", "sub", "mul"]
TWO_OP = ["add_sub", "sub_add", "add_add", "sub_sub", "mul_add", "mul_sub"]


def _steps(ops):
    steps, prev = [], None
    for x, op, y in ops:
        x = prev if x is None else x
        prev = _apply(x, op, y)
        steps.append((x, op, y, prev))
    return steps


def _eq(step):
    x, op, y, r = step
    return f"{x} {op} {y} = {r}"


def make_problem(rng: random.Random, lang: str, kind: str | None = None, two_op_p: float = 0.4) -> Problem:
    if kind is None:
        kind = rng.choice(TWO_OP) if rng.random() < two_op_p else rng.choice(ONE_OP)
    steps = _steps(_numbers(rng, kind))
    return (_problem_en if lang == "en" else _problem_zh)(rng, kind, steps)


def _problem_en(rng, kind, steps):
    n, he, him = _person(rng, "en")
    n2, _, _ = _person(rng, "en", exclude=(n,))
    n3, _, _ = _person(rng, "en", exclude=(n, n2))
    _, objs = rng.choice(EN_OBJECTS)
    place = rng.choice(EN_PLACES)
    cont, conts = rng.choice(EN_CONTAINERS)
    s1 = steps[0]
    a, b, r = s1[0], s1[2], s1[3]
    e1 = _eq(s1)
    t = rng.randrange(4)
    if kind == "add":
        q, sol = [
            (f"{n} has {a} {objs}. {_cap(he)} buys {b} more. How many {objs} does {n} have now?",
             f"{n} has {e1} {objs} now."),
            (f"There are {a} {objs} in the {place}. {n} puts {b} more {objs} in the {place}. How many {objs} are in the {place} now?",
             f"There are {e1} {objs} in the {place} now."),
            (f"{n} has {a} {objs} and {n2} has {b} {objs}. How many {objs} do they have together?",
             f"Together they have {e1} {objs}."),
            (f"{n} collected {a} {objs} in the morning and {b} {objs} in the afternoon. How many {objs} did {n} collect in all?",
             f"{n} collected {e1} {objs} in all."),
        ][t]
    elif kind == "sub":
        q, sol = [
            (f"{n} has {a} {objs}. {_cap(he)} gives {b} {objs} to {n2}. How many {objs} does {n} have left?",
             f"{n} has {e1} {objs} left."),
            (f"There are {a} {objs} in the {place}. {n} takes out {b} {objs}. How many {objs} are in the {place} now?",
             f"There are {e1} {objs} in the {place} now."),
            (f"{n} has {a} {objs}. {n2} has {b} fewer {objs} than {n}. How many {objs} does {n2} have?",
             f"{n2} has {e1} {objs}."),
            (f"{n} had {a} {objs} and lost {b} of them. How many {objs} does {n} have now?",
             f"{n} has {e1} {objs} now."),
        ][t]
    elif kind == "mul":
        q, sol = [
            (f"{n} buys {a} {conts} of {objs}. Each {cont} has {b} {objs}. How many {objs} does {n} buy in total?",
             f"{n} buys {e1} {objs} in total."),
            (f"There are {a} {conts}. Each {cont} holds {b} {objs}. How many {objs} are there in all?",
             f"There are {e1} {objs} in all."),
            (f"{n} gives {b} {objs} to each of {a} friends. How many {objs} does {n} give away?",
             f"{n} gives away {e1} {objs}."),
            (f"{n} makes {a} rows of {objs} with {b} {objs} in each row. How many {objs} are there?",
             f"There are {e1} {objs}."),
        ][t]
    else:
        s2 = steps[1]
        c, e2 = s2[2], _eq(s2)
        q, sol = {
            "add_sub": (f"{n} has {a} {objs}. {_cap(he)} buys {b} more and then gives {c} to {n2}. How many {objs} does {n} have now?",
                        f"After buying, {n} has {e1} {objs}. After giving some away, {n} has {e2} {objs} now."),
            "sub_add": (f"{n} has {a} {objs}. {_cap(he)} loses {b} of them and then finds {c} more. How many {objs} does {n} have now?",
                        f"After losing some, {n} has {e1} {objs}. After finding more, {n} has {e2} {objs} now."),
            "add_add": (f"{n} has {a} {objs}. {n2} gives {him} {b} more and {n3} gives {him} {c} more. How many {objs} does {n} have now?",
                        f"With the gift from {n2}, {n} has {e1} {objs}. With the gift from {n3}, {n} has {e2} {objs} now."),
            "sub_sub": (f"{n} has {a} {objs}. {_cap(he)} gives {b} to {n2} and {c} to {n3}. How many {objs} does {n} have left?",
                        f"After giving {b} to {n2}, {n} has {e1} {objs}. After giving {c} to {n3}, {n} has {e2} {objs} left."),
            "mul_add": (f"{n} buys {a} {conts} with {b} {objs} in each {cont}. {_cap(he)} already had {c} {objs}. How many {objs} does {n} have now?",
                        f"{n} buys {e1} {objs}. With the ones {he} had, {n} has {e2} {objs} now."),
            "mul_sub": (f"{n} buys {a} {conts} with {b} {objs} in each {cont}. {_cap(he)} gives {c} {objs} to {n2}. How many {objs} does {n} have left?",
                        f"{n} buys {e1} {objs}. After giving some to {n2}, {n} has {e2} {objs} left."),
        }[kind]
    return Problem(_singular(q), steps, _singular(sol), "en", kind)


def _problem_zh(rng, kind, steps):
    n, ta, _ = _person(rng, "zh")
    n2, _, _ = _person(rng, "zh", exclude=(n,))
    n3, _, _ = _person(rng, "zh", exclude=(n, n2))
    m, o = rng.choice(ZH_OBJECTS)
    place = rng.choice(ZH_PLACES)
    cont = rng.choice(ZH_CONTAINERS)
    s1 = steps[0]
    a, b = s1[0], s1[2]
    e1 = _eq(s1)
    t = rng.randrange(4)
    if kind == "add":
        q, sol = [
            (f"{n}有{a}{m}{o}，又买了{b}{m}。现在{ta}有多少{m}{o}？", f"{n}现在有{e1}{m}{o}。"),
            (f"{place}里有{a}{m}{o}，{n}又放进去{b}{m}。现在{place}里有多少{m}{o}？", f"现在{place}里有{e1}{m}{o}。"),
            (f"{n}有{a}{m}{o}，{n2}有{b}{m}{o}。他们一共有多少{m}{o}？", f"他们一共有{e1}{m}{o}。"),
            (f"{n}上午收集了{a}{m}{o}，下午收集了{b}{m}。{ta}一共收集了多少{m}{o}？", f"{n}一共收集了{e1}{m}{o}。"),
        ][t]
    elif kind == "sub":
        q, sol = [
            (f"{n}有{a}{m}{o}，给了{n2}{b}{m}。{ta}还剩多少{m}{o}？", f"{n}还剩{e1}{m}{o}。"),
            (f"{place}里有{a}{m}{o}，{n}拿走了{b}{m}。{place}里还有多少{m}{o}？", f"{place}里还有{e1}{m}{o}。"),
            (f"{n}有{a}{m}{o}，{n2}比{n}少{b}{m}。{n2}有多少{m}{o}？", f"{n2}有{e1}{m}{o}。"),
            (f"{n}原来有{a}{m}{o}，弄丢了{b}{m}。{ta}现在有多少{m}{o}？", f"{n}现在有{e1}{m}{o}。"),
        ][t]
    elif kind == "mul":
        q, sol = [
            (f"{n}买了{a}{cont}{o}，每{cont}有{b}{m}。{ta}一共买了多少{m}{o}？", f"{n}一共买了{e1}{m}{o}。"),
            (f"有{a}{cont}{o}，每{cont}装着{b}{m}。一共有多少{m}{o}？", f"一共有{e1}{m}{o}。"),
            (f"{n}给{a}个朋友每人{b}{m}{o}。{ta}一共送出多少{m}{o}？", f"{n}一共送出{e1}{m}{o}。"),
            (f"{n}把{o}摆成{a}排，每排{b}{m}。一共有多少{m}{o}？", f"一共有{e1}{m}{o}。"),
        ][t]
    else:
        s2 = steps[1]
        c, e2 = s2[2], _eq(s2)
        q, sol = {
            "add_sub": (f"{n}有{a}{m}{o}，又买了{b}{m}，然后给了{n2}{c}{m}。{ta}现在有多少{m}{o}？",
                        f"买了以后{n}有{e1}{m}{o}，给了以后{n}有{e2}{m}{o}。"),
            "sub_add": (f"{n}有{a}{m}{o}，弄丢了{b}{m}，后来又找到{c}{m}。{ta}现在有多少{m}{o}？",
                        f"弄丢以后{n}有{e1}{m}{o}，找到以后{n}有{e2}{m}{o}。"),
            "add_add": (f"{n}有{a}{m}{o}，{n2}送给{ta}{b}{m}，{n3}又送给{ta}{c}{m}。{ta}现在有多少{m}{o}？",
                        f"{n2}送了以后{n}有{e1}{m}{o}，{n3}送了以后{n}有{e2}{m}{o}。"),
            "sub_sub": (f"{n}有{a}{m}{o}，给了{n2}{b}{m}，又给了{n3}{c}{m}。{ta}还剩多少{m}{o}？",
                        f"给了{n2}以后{n}有{e1}{m}{o}，给了{n3}以后{n}还剩{e2}{m}{o}。"),
            "mul_add": (f"{n}买了{a}{cont}{o}，每{cont}有{b}{m}。{ta}原来还有{c}{m}。{ta}现在有多少{m}{o}？",
                        f"{n}买了{e1}{m}{o}，加上原来的，{n}现在有{e2}{m}{o}。"),
            "mul_sub": (f"{n}买了{a}{cont}{o}，每{cont}有{b}{m}，然后给了{n2}{c}{m}。{ta}还剩多少{m}{o}？",
                        f"{n}买了{e1}{m}{o}，给了{n2}以后还剩{e2}{m}{o}。"),
        }[kind]
    return Problem(q, steps, sol, "zh", kind)
