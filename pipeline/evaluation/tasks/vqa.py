"""Visual question answering: greedy short answers about held-out images, exact match after
normalisation (lowercase, no punctuation or articles, number words as digits), per question type."""
from __future__ import annotations

import json
import time

from pipeline.data.datasets import load
from pipeline.errors import ConfigError
from pipeline.evaluation.common import image_prompts, limited, warn_if_cut
from pipeline.evaluation.registry import EvalRun, task
from pipeline.evaluation.scoring.visual import normalize_answer, vqa_scores


def check(cfg, where: str) -> None:
    if cfg.vqa is None:
        raise ConfigError(f"{where}.vqa: task 'vqa' needs image questions with answers; use data=embedded-vlm or set "
                          f"{where}.vqa.path=FILE (records: prompt with an image part, answer, type)")


@task("vqa", order=55, headlines=("vqa_accuracy",), budget=16, reads=("vqa",), check=check,
      percent=("vqa_accuracy", "vqa_stopped_at_eos"))
def run(ev: EvalRun) -> dict:
    """vqa_accuracy overall and vqa_accuracy_<type>; vqa_predictions.jsonl keeps every answer with its image."""
    cfg, ctx = ev.cfg, ev.ctx
    records = limited(load(cfg.vqa, "prompt"), cfg.limit)
    prompts, images = image_prompts(ev.backend, records, ctx)
    budget = cfg.budget("vqa")
    started = time.time()
    outputs = ev.backend.generate(prompts, budget, progress=f"[{ctx.name}] vqa", images=images)
    seconds = time.time() - started
    with open(ctx.out_dir / "vqa_predictions.jsonl", "w") as handle:
        for record, output in zip(records, outputs):
            handle.write(json.dumps({"image": _image_of(record), "question": _text_of(record),
                                     "type": record.get("type", "all"), "answer": record["answer"],
                                     "output": output.text,
                                     "correct": normalize_answer(output.text) == normalize_answer(record["answer"]),
                                     "stopped": output.stopped}, ensure_ascii=False) + "\n")
    stopped = sum(o.stopped for o in outputs) / len(records)
    warn_if_cut(ctx, "vqa", stopped, budget)
    scores = vqa_scores([(r.get("type", "all"), r["answer"], o.text) for r, o in zip(records, outputs)])
    return {**scores, "vqa_stopped_at_eos": round(stopped, 4), "vqa_prompts_per_s": round(len(records) / seconds, 2)}


def _image_of(record: dict) -> str | None:
    from pipeline.data.images import images_in

    refs = images_in(record["prompt"])
    return refs[0] if refs and not refs[0].startswith("data:") else None


def _text_of(record: dict) -> str:
    content = record["prompt"][-1]["content"]
    return content if isinstance(content, str) else " ".join(p.get("text", "") for p in content if p.get("type") == "text")
