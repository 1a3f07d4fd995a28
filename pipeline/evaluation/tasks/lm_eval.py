"""EleutherAI's lm-evaluation-harness on the evaluated model (its own loader, not the backend)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

from pipeline.evaluation.registry import EvalRun, task
from pipeline.evaluation.scoring import lmeval
from pipeline.evaluation.scoring.lmeval import check_available
from pipeline.models.loading import torch_dtype
from pipeline.ranges import at_least, setting


@dataclass
class LMEvalSettings:
    tasks: List[str] = setting(factory=list, help="lm-evaluation-harness task names, e.g. [gsm8k, mmlu]")
    num_fewshot: Optional[int] = at_least(0, None, help="null: each harness task's own default")


def check(cfg, where: str) -> None:
    check_available(where, cfg.settings.lm_eval.tasks)


@task("lm_eval", order=80, packages=("lm_eval",), extra="eval", check=check, settings=LMEvalSettings)
def run(ev: EvalRun) -> dict:
    """Harness tasks `settings.lm_eval.tasks`; their metrics are named lmeval_* and all shown."""
    cfg, ctx = ev.cfg, ev.ctx
    dtype = str(torch_dtype(cfg.dtype or ctx.model.dtype, ctx.device, ctx.model.path)).replace("torch.", "")
    settings: LMEvalSettings = cfg.settings.lm_eval
    return lmeval.run(ev.source, settings.tasks, ctx.device, dtype, cfg.batch_size, settings.num_fewshot,
                      cfg.limit)
