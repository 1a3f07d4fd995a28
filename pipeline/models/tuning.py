"""Per-model settings the shipped recipes and stage defaults read (`model.tuning.*`).

A 4M-parameter toy and an 8B model want different learning rates, step counts and generation
budgets; a recipe should not have to know which one it runs on. Each conf/model entry therefore
carries a `tuning` block, and the stage defaults (conf/stage/*.yaml) and recipes interpolate it,
e.g. `learning_rate: ${model.tuning.sft.learning_rate}`. Every recipe that trains SFT thus uses the
same settings for a model, and the stored adapter is reused across recipes. Values here are the
defaults for a real model on a GPU; conf/model/embedded.yaml and smollm2-135m.yaml set what was
measured to work on a 2-core CPU. Any of them is a normal override: `model.tuning.sft.max_steps=50`,
or `stages.sft.max_steps=50` for one stage.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from pipeline.ranges import at_least, between, positive


@dataclass
class SFTTuning:
    learning_rate: float = positive(2e-4)  # LoRA / QLoRA (usually 1e-4..2e-4; full fine-tuning wants 1e-5..5e-5)
    max_steps: int = at_least(1, 200, also=(-1,))
    short_steps: int = at_least(1, 100, also=(-1,))  # recipes that leave room for a later stage (sft_grpo, distill's student)
    batch_size: int = at_least(1, 8)
    max_length: int = at_least(1, 1024)


@dataclass
class DPOTuning:
    learning_rate: float = positive(5e-6)
    max_steps: int = at_least(1, 100, also=(-1,))
    batch_size: int = at_least(1, 8)
    max_length: int = at_least(1, 1024)


@dataclass
class GRPOTuning:
    learning_rate: float = positive(1e-6)
    max_steps: int = at_least(1, 100)
    num_generations: int = at_least(2, 8)
    batch_size: int = at_least(1, 32)  # completions per step: batch_size / num_generations prompts
    max_completion_length: int = at_least(1, 256)
    top_k: int = at_least(0, 0)        # 0: no top-k cut (small vocabularies may need one)


@dataclass
class DistillTuning:
    # Share of the teacher's decoder layers the distill recipe's student keeps (its `student` prune stage;
    # 1.0: a full copy of the base). Measured on 2 CPU cores: the embedded model's 3-layer student reached
    # 12% after 150 steps (the full one 33.5%), so it keeps all 4; SmolLM2 keeps 28 of 30 (22 layers: 4%).
    student_keep_fraction: float = between(0.75, 0, 1, low_open=True)


@dataclass
class EvalTuning:
    limit: Optional[int] = at_least(1, None)  # records per eval task (null: all)
    max_new_tokens: int = at_least(1, 256)  # generation budget of open answers (math, instruct)
    batch_size: int = at_least(1, 32)


@dataclass
class Tuning:
    sft: SFTTuning = field(default_factory=SFTTuning)
    dpo: DPOTuning = field(default_factory=DPOTuning)
    grpo: GRPOTuning = field(default_factory=GRPOTuning)
    distill: DistillTuning = field(default_factory=DistillTuning)
    eval: EvalTuning = field(default_factory=EvalTuning)
