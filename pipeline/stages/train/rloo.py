"""RLOO (REINFORCE Leave-One-Out, Ahmadian et al. 2024) with trl's RLOOTrainer: as GRPO, a group of
completions per prompt scored by the rewards, but each completion's baseline is the mean reward of the
*other* completions of its prompt, and the KL to the reference enters the reward, not the loss.

    python main.py recipe=reward_rloo
    python main.py recipe=reward_rloo stages.rloo.num_generations=8 stages.rloo.normalize_advantages=true

Same prompts, rewards (a reward stage's model among them), policy and settings as grpo:
pipeline/stages/train/online_rl.py.
"""
from __future__ import annotations

from dataclasses import dataclass

from pipeline.artifact import Artifact
from pipeline.engine.context import Inputs, StageContext
from pipeline.engine.registry import TRAINING_LIBRARIES, stage
from pipeline.ranges import setting
from pipeline.stages.train.online_rl import OnlineRL, train_online
from pipeline.stages.train.sft import trained_kind


@dataclass
class RLOOConfig(OnlineRL):
    kind: str = setting("rloo", "the stage kind")
    normalize_advantages: bool = setting(False, "divide the leave-one-out advantages by their std over the batch")

    def trainer_settings(self) -> dict:
        return {"normalize_advantages": self.normalize_advantages}


@stage("rloo", config=RLOOConfig, consumes={"model", "adapter", "reward_model"}, produces=trained_kind,
       libraries=TRAINING_LIBRARIES, distributed=True)
def run(cfg: RLOOConfig, inputs: Inputs, ctx: StageContext) -> Artifact:
    """Sample groups of completions, score them, and push the policy by leave-one-out advantages."""
    from trl import RLOOConfig as TrlRLOOConfig
    from trl import RLOOTrainer

    return train_online(cfg, inputs, ctx, RLOOTrainer, TrlRLOOConfig, "RLOO (leave-one-out baseline)")
