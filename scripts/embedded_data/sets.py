"""The jsonl sets: SFT, preference, prompts and the held-out tests, deduplicated against each other."""
from __future__ import annotations

import argparse
import json
import os
import random
from dataclasses import dataclass

from embedded_data.instruct import INSTRUCT_KINDS, make_instruct
from embedded_data.pretrain import make_doc
from embedded_data.problems import Problem, make_problem
from embedded_data.tool_cases import make_tool
from embedded_data.tools import tool_call_text
from embedded_data.vocab import SEED, normalize


@dataclass
class Sizes:
    test_math: int = 200
    test_text: int = 100
    test_instruct: int = 60
    test_tools: int = 40
    preference_test: int = 200
    sft_math: int = 3000
    sft_instruct: int = 700
    sft_tool: int = 500
    preference_train: int = 1500
    prompts_train: int = 2000
    prompts_tools: int = 600


def _user(c):
    return [{"role": "user", "content": c}]


def _asst(c):
    return [{"role": "assistant", "content": c}]


def _rambling(rng, lang):
    """A continuation that does not stop: the next problem of a worksheet."""
    p = make_problem(rng, lang)
    return p.question + (" " if lang == "en" else "") + p.narrative


def _wrong_number(rng, p: Problem) -> str:
    steps = [list(s) for s in p.steps]
    delta = rng.choice([-3, -2, -1, 1, 2, 3, 10, -10])
    last = steps[-1]
    last[3] = max(0, last[3] + delta) if last[3] + delta != last[3] else last[3] + 1
    if last[3] == p.answer:
        last[3] += 1
    lines = [f"{x} {op} {y} = {r}" for x, op, y, r in steps]
    return "\n".join(lines) + f"\n#### {last[3]}"


def _instruct_rejected(rng, kind, lang, answer, check, raw):
    if kind == "json_keys":
        obj = dict(raw)
        drop = rng.choice(list(obj))
        del obj[drop]
        return json.dumps(obj, ensure_ascii=False) if rng.random() < 0.5 else \
            ", ".join(f"{k}: {v}" for k, v in raw.items())
    if kind == "word_count":
        if lang == "en":
            return answer[:-1] + rng.choice([" today.", " every day.", " again and again."])
        return answer[:-1] + rng.choice(["，非常开心。", "，每天都这样。"])
    if kind == "list_items":
        items = raw + ["..."] if rng.random() < 0.5 else raw[:-1]
        if len(items) == len(raw):
            items = raw[:-1]
        return "\n".join(f"{i + 1}. {x}" for i, x in enumerate(items)) if items else ", ".join(raw)
    if kind == "question":
        return raw[0]
    raise ValueError(kind)


class HeldOut:
    def __init__(self):
        self.keys: set[str] = set()

    def add(self, text: str) -> bool:
        k = normalize(text)
        if k in self.keys:
            return False
        self.keys.add(k)
        return True

    def __contains__(self, text):
        return normalize(text) in self.keys


def build_sets(seed: int = SEED, sizes: Sizes | None = None) -> dict:
    """All jsonl sets as lists of dicts, plus 'held' (held-out key set) and 'train_keys'."""
    sizes = sizes or Sizes()
    held = HeldOut()
    rng = random.Random(seed)
    out: dict[str, list] = {k: [] for k in ("test_math", "test_text", "test_instruct", "test_tools",
                                            "preference_test", "sft_train", "preference_train", "prompts_train")}
    # ---- held-out sets first ----
    for lang in ("en", "zh"):
        while sum(r["lang"] == lang for r in out["test_math"]) < sizes.test_math // 2:
            p = make_problem(rng, lang)
            if held.add(p.question):
                out["test_math"].append({"question": p.question, "answer": p.worked(), "lang": lang, "kind": p.kind})
    kinds = list(INSTRUCT_KINDS)
    i = 0
    while len(out["test_instruct"]) < sizes.test_instruct:
        lang = "en" if i % 2 == 0 else "zh"
        kind = kinds[(i // 2) % len(kinds)]
        _, prompt, answer, check, _ = make_instruct(rng, lang, kind)
        if held.add(prompt):
            out["test_instruct"].append({"prompt": prompt, "check": check, "lang": lang, "reference": answer})
            i += 1
    tools = ["calculator", "calculator", "get_weather", "search_knowledge"]
    i = 0
    while len(out["test_tools"]) < sizes.test_tools:
        lang = "en" if i % 2 == 0 else "zh"
        t = make_tool(rng, lang, tools[(i // 2) % len(tools)])
        if held.add(t["prompt"]):
            out["test_tools"].append({"prompt": t["prompt"], "tool": t["tool"], "arguments": t["arguments"],
                                      "answer": t["final"], "lang": lang})
            i += 1
    while len(out["preference_test"]) < sizes.preference_test:
        rec = _preference_record(rng, "en" if len(out["preference_test"]) % 2 == 0 else "zh")
        if held.add(rec["prompt"][0]["content"]):
            out["preference_test"].append(rec)
    # held-out domain text: small documents whose items are all held out too
    held_items: set[str] = set()
    while len(out["test_text"]) < sizes.test_text:
        item_keys: set[str] = set()
        doc, _ = make_doc(rng, held.keys, item_keys)
        if item_keys & held.keys or len(doc) > 700:
            continue
        held_items |= item_keys
        held.keys |= item_keys
        held.add(doc)
        out["test_text"].append({"text": doc})
    # ---- training sets (everything filtered against held) ----
    rng = random.Random(seed + 1)
    seen = set()

    def add_sft(messages, task, lang):
        k = normalize(json.dumps(messages, ensure_ascii=False))
        if k in seen or any(m["content"] in held for m in messages if m["role"] == "user"):
            return False
        seen.add(k)
        out["sft_train"].append({"messages": messages, "task": task, "lang": lang})
        return True

    n = 0
    while n < sizes.sft_math:
        lang = "en" if n % 2 == 0 else "zh"
        p = make_problem(rng, lang)
        n += add_sft(_user(p.question) + _asst(p.worked()), "math", lang)
    n = 0
    while n < sizes.sft_instruct:
        lang = "en" if n % 2 == 0 else "zh"
        _, prompt, answer, _, _ = make_instruct(rng, lang)
        n += add_sft(_user(prompt) + _asst(answer), "instruct", lang)
    n = 0
    while n < sizes.sft_tool:
        lang = "en" if n % 2 == 0 else "zh"
        t = make_tool(rng, lang)
        msgs = _user(t["prompt"]) + _asst(tool_call_text(t["tool"], t["arguments"]))
        if rng.random() < 0.5:
            msgs = msgs + [{"role": "tool", "content": t["result"]}] + _asst(t["final"])
        n += add_sft(msgs, "tool", lang)
    rng.shuffle(out["sft_train"])
    while len(out["preference_train"]) < sizes.preference_train:
        rec = _preference_record(rng, "en" if len(out["preference_train"]) % 2 == 0 else "zh")
        if rec["prompt"][0]["content"] not in held:
            out["preference_train"].append(rec)
    while len(out["prompts_train"]) < sizes.prompts_train:
        lang = "en" if len(out["prompts_train"]) % 2 == 0 else "zh"
        p = make_problem(rng, lang)
        if p.question not in held:
            out["prompts_train"].append({"prompt": _user(p.question), "answer": str(p.answer), "task": "math",
                                         "lang": lang})
    # tool cases for RL with tools in the loop (recipe tool_rl): a stream of their own, so adding them left
    # every other set as it was; {prompt, tool, arguments, answer} as test_tools, none of them held out
    rng = random.Random(seed + 2)
    out["prompts_tools"] = []
    while len(out["prompts_tools"]) < sizes.prompts_tools:
        lang = "en" if len(out["prompts_tools"]) % 2 == 0 else "zh"
        t = make_tool(rng, lang)
        if t["prompt"] not in held:
            out["prompts_tools"].append({"prompt": _user(t["prompt"]), "tool": t["tool"],
                                         "arguments": json.dumps(t["arguments"], ensure_ascii=False),
                                         "answer": t["final"], "task": "tool", "lang": lang})
    out["held"] = held.keys
    return out


def _preference_record(rng, lang):
    if rng.random() < 0.8:
        p = make_problem(rng, lang)
        chosen = p.worked()
        x = rng.random()
        if x < 0.5:
            rejected, why = _wrong_number(rng, p), "wrong_number"
        elif x < 0.75:
            rejected, why = p.narrative, "wrong_format"
        else:
            rejected, why = chosen + "\n" + _rambling(rng, lang), "no_stop"
        prompt, task = p.question, "math"
    else:
        kind, prompt, chosen, check, raw = make_instruct(rng, lang)
        if rng.random() < 0.3:
            rejected, why = chosen + "\n" + make_instruct(rng, lang, kind)[2], "no_stop"
        else:
            rejected, why = _instruct_rejected(rng, kind, lang, chosen, check, raw), "wrong_format"
        task = "instruct"
    return {"prompt": _user(prompt), "chosen": _asst(chosen), "rejected": _asst(rejected), "task": task,
            "lang": lang, "rejected_kind": why}


FILES = ["sft_train", "preference_train", "preference_test", "prompts_train", "test_math", "test_text",
         "test_instruct", "test_tools", "prompts_tools"]


def write_jsonl(path, rows):
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def write_sets(sets: dict, out_dir: str) -> dict:
    os.makedirs(out_dir, exist_ok=True)
    sizes = {}
    for name in FILES:
        path = os.path.join(out_dir, name + ".jsonl")
        write_jsonl(path, sets[name])
        sizes[name] = (len(sets[name]), os.path.getsize(path))
    return sizes


def training_texts(sets: dict):
    """Every user-visible training text (for the overlap check)."""
    for r in sets["sft_train"]:
        for m in r["messages"]:
            yield m["content"]
    for r in sets["preference_train"]:
        yield r["prompt"][0]["content"]
    for r in sets["prompts_train"]:
        yield r["prompt"][0]["content"]


def heldout_texts(sets: dict):
    for r in sets["test_math"]:
        yield r["question"]
    for r in sets["test_instruct"]:
        yield r["prompt"]
    for r in sets["test_tools"]:
        yield r["prompt"]
    for r in sets["preference_test"]:
        yield r["prompt"][0]["content"]
    for r in sets["test_text"]:
        yield r["text"]


def check_overlap(sets: dict, pretrain_item_keys: set, pretrain_docs_normalized: str | None = None) -> int:
    """Counts held-out questions / prompts found in training data (must be 0): exact normalised match
    against every training text and pretraining item, and, if the normalised pretraining text is given,
    occurrences in it that start at a word boundary ("LoRA..." inside "QLoRA..." is not one)."""
    train = {normalize(t) for t in training_texts(sets)} | pretrain_item_keys
    bad = [t for t in heldout_texts(sets) if normalize(t) in train]
    if pretrain_docs_normalized is not None:
        probes = [r["question"] for r in sets["test_math"]] + [r["prompt"] for r in sets["test_instruct"]] + \
            [r["prompt"] for r in sets["test_tools"]] + [r["prompt"][0]["content"] for r in sets["preference_test"]]
        for t in probes:
            k, i = normalize(t), -1
            while (i := pretrain_docs_normalized.find(k, i + 1)) >= 0:
                if i == 0 or not pretrain_docs_normalized[i - 1].isalnum():
                    bad.append(t)
                    break
    return len(bad)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="embedded/data")
    ap.add_argument("--seed", type=int, default=SEED)
    ap.add_argument("--print-samples", action="store_true")
    args = ap.parse_args()
    sets = build_sets(args.seed)
    if args.print_samples:
        rng = random.Random(0)
        for name in FILES:
            print("==", name, json.dumps(sets[name][0], ensure_ascii=False))
        for _ in range(6):
            print("-- doc --\n" + make_doc(rng, sets["held"], set())[0])
        return
    for name, (n, size) in write_sets(sets, args.out).items():
        print(f"{name}.jsonl: {n} records, {size / 1024:.0f} KiB")


if __name__ == "__main__":
    main()
