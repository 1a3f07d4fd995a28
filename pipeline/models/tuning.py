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

from dataclasses import dataclass
from typing import Optional

from pipeline.ranges import at_least, between, positive, setting


@dataclass
class SFTTuning:
    learning_rate: float = positive(2e-4, help="LoRA / QLoRA (usually 1e-4..2e-4; full fine-tuning wants 1e-5..5e-5)")
    full_learning_rate: float = positive(2e-5, help="recipes whose SFT trains every weight (tool_rl)")
    max_steps: int = at_least(1, 200, also=(-1,), help="optimizer steps of every recipe's SFT")
    short_steps: int = at_least(1, 100, also=(-1,),
                                help="recipes that leave room for a later stage (sft_grpo, distill's student)")
    batch_size: int = at_least(1, 8, help="chats per step on each device")
    max_length: int = at_least(1, 1024, help="tokens per chat; longer ones are cut")


@dataclass
class DPOTuning:
    learning_rate: float = positive(5e-6, help="DPO's peak learning rate")
    max_steps: int = at_least(1, 100, also=(-1,), help="optimizer steps")
    batch_size: int = at_least(1, 8, help="pairs per step on each device")
    max_length: int = at_least(1, 1024, help="prompt + completion tokens")


@dataclass
class RewardTuning:
    learning_rate: float = positive(1e-4, help="reward model's peak rate (LoRA and a new head; full: 1e-5..2e-5)")
    max_steps: int = at_least(1, 100, also=(-1,), help="optimizer steps")
    batch_size: int = at_least(1, 8, help="pairs per step on each device")
    max_length: int = at_least(1, 1024, help="prompt + completion tokens")


@dataclass
class GRPOTuning:
    learning_rate: float = positive(1e-6, help="GRPO's peak learning rate, continuing an adapter")
    new_adapter_learning_rate: float = positive(1e-5, help="GRPO training a new LoRA (tool_rl: on a full SFT); its "
                                                           "B starts at zero, so it wants a higher rate")
    max_steps: int = at_least(1, 100, help="optimizer steps")
    num_generations: int = at_least(2, 8, help="group size: completions sampled per prompt")
    batch_size: int = at_least(1, 32, help="completions per step: batch_size / num_generations prompts")
    max_completion_length: int = at_least(1, 256, help="tokens per sampled completion")
    top_k: int = at_least(0, 0, help="0: no top-k cut (small vocabularies may need one)")
    temperature: float = positive(0.8, help="sampling temperature of the groups")
    difficulty_samples: int = at_least(0, 0, help="sft_grpo's difficulty filter: samples per prompt (0: off)")
    difficulty_pool: Optional[int] = at_least(1, None, help="sft_grpo's difficulty filter: prompts measured "
                                                            "(null: all)")


@dataclass
class DistillTuning:
    # Share of the teacher's decoder layers the distill recipe's student keeps (its `student` prune stage;
    # 1.0: a full copy of the base). Measured on 2 CPU cores: the embedded model's 3-layer student reached
    # 12% after 150 steps (the full one 33.5%), so it keeps all 4; SmolLM2 keeps 28 of 30 (22 layers: 4%).
    student_keep_fraction: float = between(0.75, 0, 1, low_open=True, help="share of the decoder layers the "
                                                                          "distill recipe's student keeps")


@dataclass
class EvalTuning:
    limit: Optional[int] = at_least(1, None, help="records per eval task (null: all)")
    max_new_tokens: int = at_least(1, 256, help="generation budget of open answers (math, instruct)")
    batch_size: int = at_least(1, 32, help="prompts per generate call")


@dataclass
class Tuning:
    sft: SFTTuning = setting(factory=SFTTuning, help="every recipe's SFT (stages sft, qlora, distill)")
    dpo: DPOTuning = setting(factory=DPOTuning, help="stage dpo")
    reward: RewardTuning = setting(factory=RewardTuning, help="stage reward")
    grpo: GRPOTuning = setting(factory=GRPOTuning, help="stages grpo and rloo")
    distill: DistillTuning = setting(factory=DistillTuning, help="recipe distill")
    eval: EvalTuning = setting(factory=EvalTuning, help="eval stages, and the exports' parity budget")
