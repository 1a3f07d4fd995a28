"""Perplexity on held-out plain text: strided windows, each token scored once, bounded memory."""
from __future__ import annotations

from pipeline.answers import perplexity
from pipeline.data.datasets import load
from pipeline.evaluation.common import limited
from dataclasses import dataclass
from pipeline.evaluation.registry import EvalRun, task
from pipeline.ranges import at_least


@dataclass
class PerplexitySettings:
    max_length: int = at_least(2, 1024, help="window length (capped at the model's context)")
    stride: int = at_least(1, 512, help="window step; each token is scored once")


@task("perplexity", order=70, headlines=("perplexity",), reads=("text",), settings=PerplexitySettings)
def run(ev: EvalRun) -> dict:
    """exp(mean NLL) over every scored token (pipeline/backends/perplexity.py computes the windows)."""
    cfg = ev.cfg
    settings: PerplexitySettings = cfg.settings.perplexity
    texts = [r["text"] for r in limited(load(cfg.text, "text"), cfg.limit)]
    total_nll, n_tokens = ev.backend.nll(texts, settings.max_length, settings.stride,
                                          progress=f"[{ev.ctx.name}] perplexity")
    return {"perplexity": round(perplexity(total_nll, n_tokens), 4), "perplexity_tokens": n_tokens}
