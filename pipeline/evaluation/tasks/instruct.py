"""Instruction following: verifiable checks on each answer, and overlap with reference answers
(BLEU, chrF, ROUGE, METEOR) where the data has them."""
from __future__ import annotations

import json

from pipeline.backends.base import chat_prompt
from pipeline.data.datasets import load
from pipeline.evaluation.common import limited, prompt_tokenizer, warn_if_cut
from pipeline.evaluation.registry import EvalRun, task
from pipeline.evaluation.scoring.instruction_checks import passes
from pipeline.evaluation.scoring.textmetrics import score_generation


@task("instruct", order=30, packages=("sacrebleu", "rouge_score", "nltk"), extra="eval", headlines=("instruct_pass_rate",), budget=256, reads=("instruct",),
      percent=("instruct_pass_rate",), items=("instruct_predictions.jsonl", "prompt", "output", "check", "passed"))
def run(ev: EvalRun) -> dict:
    """Pass rate of the checks; instruct_predictions.jsonl keeps every answer."""
    cfg, ctx = ev.cfg, ev.ctx
    records = limited(load(cfg.instruct, "instruct"), cfg.limit)
    tokenizer = prompt_tokenizer(ev.backend, ctx)
    generations = ev.backend.generate([chat_prompt(tokenizer, r["prompt"]) for r in records], cfg.budget("instruct"),
                                       progress=f"[{ctx.name}] instruct")
    outputs = [o.text.strip() for o in generations]
    ev.shared["instruct"] = (records, outputs)
    stopped = sum(o.stopped for o in generations) / len(records)
    warn_if_cut(ctx, "instruct", stopped, cfg.budget("instruct"))
    passed = [passes(o, r["check"]) for r, o in zip(records, outputs)]
    metrics: dict = {"instruct_pass_rate": round(sum(passed) / len(records), 4), "instruct_n": len(records),
                     "instruct_stopped_at_eos": round(stopped, 4)}
    with_reference = [(o, r["reference"]) for r, o in zip(records, outputs) if r.get("reference")]
    if with_reference:
        scores = score_generation([o for o, _ in with_reference], [ref for _, ref in with_reference])
        metrics.update({f"gen_{k}": v for k, v in scores.items()
                        if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "n"})
    with open(ctx.out_dir / "instruct_predictions.jsonl", "w") as handle:
        handle.writelines(json.dumps({"prompt": r["prompt"], "check": r["check"], "output": o, "passed": ok},
                                     ensure_ascii=False) + "\n" for r, o, ok in zip(records, outputs, passed))
    return metrics
