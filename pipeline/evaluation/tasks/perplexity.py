"""Perplexity on held-out plain text: strided windows, each token scored once, bounded memory."""
from __future__ import annotations

from pipeline.answers import perplexity
from pipeline.data.datasets import load
from pipeline.evaluation.common import limited
from pipeline.evaluation.registry import EvalRun, task


@task("perplexity", order=70, headlines=("perplexity",), reads=("text",))
def run(ev: EvalRun) -> dict:
    """exp(mean NLL) over every scored token (pipeline/backends/perplexity.py computes the windows)."""
    cfg = ev.cfg
    texts = [r["text"] for r in limited(load(cfg.text, "text"), cfg.limit)]
    total_nll, n_tokens = ev.backend.nll(texts, cfg.perplexity_max_length, cfg.perplexity_stride,
                                          progress=f"[{ev.ctx.name}] perplexity")
    return {"perplexity": round(perplexity(total_nll, n_tokens), 4), "perplexity_tokens": n_tokens}
