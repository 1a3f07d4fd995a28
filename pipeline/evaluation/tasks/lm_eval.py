"""EleutherAI's lm-evaluation-harness on the evaluated model (its own loader, not the backend)."""
from __future__ import annotations

from pipeline.evaluation.registry import EvalRun, task
from pipeline.evaluation.scoring import lmeval
from pipeline.evaluation.scoring.lmeval import check_available
from pipeline.models.loading import torch_dtype


def check(cfg, where: str) -> None:
    check_available(where, cfg.lm_eval_tasks)


@task("lm_eval", order=80, check=check)
def run(ev: EvalRun) -> dict:
    """Harness tasks `lm_eval_tasks`; their metrics are named lmeval_* and all shown."""
    cfg, ctx = ev.cfg, ev.ctx
    dtype = str(torch_dtype(cfg.dtype or ctx.model.dtype, ctx.device, ctx.model.path)).replace("torch.", "")
    return lmeval.run(ev.source, cfg.lm_eval_tasks, ctx.device, dtype, cfg.batch_size, cfg.lm_eval_num_fewshot,
                      cfg.limit)
