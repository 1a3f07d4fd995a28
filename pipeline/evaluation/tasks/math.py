"""Held-out arithmetic (GSM8K-style): greedy answers, the final number extracted, exact match."""
from __future__ import annotations

import json
import time

from pipeline.answers import extract_answer
from pipeline.backends.base import chat_prompt
from pipeline.data.datasets import load
from pipeline.evaluation.common import limited, prompt_tokenizer, warn_if_cut
from pipeline.evaluation.registry import EvalRun, task


@task("math", order=20, headlines=("math_accuracy", "stopped_at_eos"), budget=256, reads=("math",),
      percent=("math_accuracy", "stopped_at_eos"), items=("predictions.jsonl", "question", "output", "predicted", "correct"))
def run(ev: EvalRun) -> dict:
    """Exact match of the final number; predictions.jsonl keeps every answer."""
    cfg, ctx = ev.cfg, ev.ctx
    records = limited(load(cfg.math, "gsm8k"), cfg.limit)
    tokenizer = prompt_tokenizer(ev.backend, ctx)
    started = time.time()
    budget = cfg.budget("math")
    outputs = ev.backend.generate([chat_prompt(tokenizer, r["question"]) for r in records], budget,
                                   progress=f"[{ctx.name}] math")
    seconds = time.time() - started
    ev.shared["math"] = outputs
    correct = 0
    with open(ctx.out_dir / "predictions.jsonl", "w") as handle:
        for record, output in zip(records, outputs):
            predicted = extract_answer(output.text)
            ok = predicted == record["target"]
            correct += ok
            handle.write(json.dumps({"question": record["question"], "target": record["target"], "output": output.text,
                                     "predicted": predicted, "correct": ok, "stopped": output.stopped},
                                    ensure_ascii=False) + "\n")
    stopped = sum(o.stopped for o in outputs) / len(records)
    warn_if_cut(ctx, "math", stopped, budget)
    return {"math_accuracy": round(correct / len(records), 4), "math_correct": correct, "math_n": len(records),
            "prompts_per_s": round(len(records) / seconds, 2), "stopped_at_eos": round(stopped, 4),
            "math_max_new_tokens": budget}
