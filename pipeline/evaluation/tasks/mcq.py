"""Multiple choice (MMLU / C-Eval style) by the log-likelihood of each option."""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Optional

from pipeline.errors import ConfigError
from pipeline.evaluation.common import limited
from pipeline.evaluation.registry import EvalRun, task
from pipeline.evaluation.scoring.mcq import load_mcq, score_mcq
from pipeline.ranges import one_of, setting


@dataclass
class MCQSettings:
    path: Optional[str] = setting(None, "MMLU / C-Eval style file (question, A, B, C, D, answer)")
    style: str = one_of("letter", ("letter", "text"),
                        help="letter: score \" A\"..\" D\"; text: the option texts per token")


def check(cfg, where: str) -> None:
    if not cfg.settings.mcq.path:
        raise ConfigError(f"{where}.settings.mcq.path: task 'mcq' needs a file; set {where}.settings.mcq.path=PATH")
    load_mcq(cfg.settings.mcq.path)


@task("mcq", order=50, headlines=("mcq_accuracy",), check=check, settings=MCQSettings, percent=("mcq_accuracy",),
      items=("mcq_predictions.jsonl", "question", "scores", "predicted", "correct"))
def run(ev: EvalRun) -> dict:
    """Needs logits, so the transformers backend; a GGUF is skipped with the reason."""
    cfg, ctx, backend = ev.cfg, ev.ctx, ev.backend
    if not hasattr(backend, "model"):
        ctx.log(f"mcq: skipped, the {backend.name} backend gives no per-token log-likelihoods here")
        return {"mcq_skipped": f"{backend.name} backend"}
    records = limited(load_mcq(cfg.settings.mcq.path), cfg.limit)
    result = score_mcq(backend.model, backend.tokenizer, records, ctx.device, cfg.batch_size, cfg.settings.mcq.style)
    with open(ctx.out_dir / "mcq_predictions.jsonl", "w") as handle:
        handle.writelines(json.dumps(p, ensure_ascii=False) + "\n" for p in result.pop("predictions"))
    return result
