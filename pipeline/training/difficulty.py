"""Prompts worth an RL step: the input policy's pass rate on each prompt, measured before training, and only
the prompts it sometimes passes and sometimes fails kept. A group whose completions all pass or all fail has
zero advantage under GRPO / RLOO, so its generation time teaches nothing (DAPO's dynamic sampling drops such
groups during training; filtering by difficulty first spends the measuring once, on a pool the user sizes).

    stages.grpo.difficulty.samples=8 stages.grpo.difficulty.pool=256

Each measured prompt's pass rate goes to difficulty.jsonl in the stage's folder, so the choice can be read.
On several processes each measures its share of the pool (every world_size-th prompt) and all get every rate;
under ZeRO-3 with its weights gathered for the measuring, under FSDP (whose other ranks hold no weights before
training) rank 0 alone.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from pipeline.ranges import at_least, between, setting


@dataclass
class DifficultySpec:
    samples: int = at_least(0, 0, help="completions sampled per prompt with the input policy before training to "
                                       "measure its pass rate (0: off, every prompt is used)")
    pool: Optional[int] = at_least(1, None, help="prompts measured, from the start of the data (null: all)")
    min_pass: float = between(0.0, 0, 1, help="keep prompts the policy passes more often than this")
    max_pass: float = between(1.0, 0, 1, help="... and less often than this")
    reward: str = setting("correctness", "the reward that decides a pass (a pass: >= 0.5)")


def pass_rates(model, tokenizer, rows: list[dict[str, Any]], samples: int, sampling: dict, max_new_tokens: int,
               batch_size: int, device: str, reward_fn) -> list[float]:
    """Each row's share of `samples` sampled completions that `reward_fn` scores >= 0.5 (None counts as a fail)."""
    from pipeline.backends.hf import hf_generate

    prompts = [tokenizer.apply_chat_template(r["prompt"], tokenize=False, add_generation_prompt=True)
               if isinstance(r["prompt"], list) else r["prompt"] for r in rows]
    repeated = [p for p in prompts for _ in range(samples)]
    texts = [g.text for g in hf_generate(model, tokenizer, repeated, batch_size, max_new_tokens, device,
                                         progress="measuring pass rates", sampling=sampling)]
    columns = {k: [r.get(k) for r in rows for _ in range(samples)] for k in rows[0] if k != "prompt"}
    scores = reward_fn(prompts=repeated, completions=texts, **columns)
    return [sum(1 for s in scores[i * samples:(i + 1) * samples] if s is not None and s >= 0.5) / samples
            for i in range(len(rows))]


def spread(rows: list, measure, process_index: int, num_processes: int, measuring: int | None = None) -> list[float]:
    """`measure(rows)`, each of the first `measuring` processes (default: all) measuring every measuring-th row from
    its index; every process gets all the rates in row order."""
    if num_processes == 1:
        return measure(rows)
    from accelerate.utils import gather_object

    measuring = measuring or num_processes
    mine = list(range(process_index, len(rows), measuring)) if process_index < measuring else []
    rates = measure([rows[i] for i in mine]) if mine else []
    by_row = dict(gather_object(list(zip(mine, rates))))
    return [by_row[i] for i in range(len(rows))]


def keep(rates: list[float], spec: DifficultySpec) -> list[int]:
    """Indices of the prompts strictly between min_pass and max_pass."""
    return [i for i, rate in enumerate(rates) if spec.min_pass < rate < spec.max_pass]


def summary(rates: list[float], kept: list[int]) -> dict[str, float]:
    n = len(rates)
    return {"difficulty_measured": n, "difficulty_kept": len(kept),
            "difficulty_all_pass": round(sum(r == 1.0 for r in rates) / n, 4),
            "difficulty_all_fail": round(sum(r == 0.0 for r in rates) / n, 4),
            "difficulty_mean_pass": round(sum(rates) / n, 4)}


def write_records(path: Path, rows: list[dict[str, Any]], rates: list[float], kept: list[int]) -> None:
    chosen = set(kept)
    with open(path, "w") as handle:
        for i, (row, rate) in enumerate(zip(rows, rates)):
            handle.write(json.dumps({"prompt": row["prompt"], "answer": row.get("answer"), "pass_rate": rate,
                                     "kept": i in chosen}, ensure_ascii=False) + "\n")
