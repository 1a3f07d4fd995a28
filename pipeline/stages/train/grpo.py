"""GRPO (DeepSeekMath's Group Relative Policy Optimization) with trl's GRPOTrainer, and its variants
as plain keys: GSPO (importance_sampling_level: sequence), DAPO, Dr. GRPO, BNPO, CISPO, SAPO, LUSPO, VESPO
(loss_type); DAPO's clip-higher (epsilon_high) and truncated-completion masking are online_rl.py's.

    python main.py recipe=sft_grpo
    python main.py recipe=sft_grpo stages.grpo.num_generations=16 stages.grpo.beta=0.0
    python main.py recipe=sft_grpo stages.grpo.importance_sampling_level=sequence stages.grpo.loss_type=grpo  # GSPO

For each prompt the policy samples `num_generations` completions; each completion's advantage is its
weighted reward minus the group's mean (divided by the group's std, `scale_rewards`), and the policy takes
PPO-style clipped steps (`epsilon`) with a KL penalty (`beta`) to the reference model. No value model.
What is trained and the rewards: pipeline/stages/train/online_rl.py.
"""
from __future__ import annotations

from dataclasses import dataclass
from pipeline.artifact import Artifact
from pipeline.engine.context import Inputs, StageContext
from pipeline.engine.registry import TRAINING_LIBRARIES, stage
from pipeline.errors import ConfigError
from pipeline.ranges import one_of, setting
from pipeline.stages.train.online_rl import OnlineRL, train_online
from pipeline.stages.train.sft import trained_kind

LOSS_TYPES = ("grpo", "dapo", "dr_grpo", "bnpo", "cispo", "sapo", "luspo", "vespo")  # trl 1.16's loss_type values
SEQUENCE_LOSSES = ("luspo",)  # trl computes these on sequence-level ratios only
SCALE_REWARDS = ("group", "batch", "none")
RATIO_LEVELS = ("token", "sequence")


@dataclass
class GRPOConfig(OnlineRL):
    kind: str = setting("grpo", "the stage kind")
    loss_type: str = one_of("dapo", LOSS_TYPES, help="trl's loss: grpo | dapo | dr_grpo | bnpo | cispo | sapo | "
                                                     "luspo | vespo")
    importance_sampling_level: str = one_of("token", RATIO_LEVELS,
                                            help="token: a policy ratio per token (GRPO) | sequence: one per "
                                                 "completion, its tokens' mean (GSPO)")
    scale_rewards: str = one_of("group", SCALE_REWARDS, help="group | batch | none: divide advantages by this std")

    def validate(self, where: str, earlier: dict) -> None:
        super().validate(where, earlier)
        if self.loss_type in SEQUENCE_LOSSES and self.importance_sampling_level != "sequence":
            raise ConfigError(f"{where}.loss_type: {self.loss_type} works on sequence-level ratios; set "
                              f"importance_sampling_level: sequence")

    def trainer_settings(self) -> dict:
        return {"loss_type": self.loss_type, "importance_sampling_level": self.importance_sampling_level,
                "scale_rewards": self.scale_rewards}


@stage("grpo", config=GRPOConfig, consumes={"model", "adapter", "reward_model"}, produces=trained_kind,
       libraries=TRAINING_LIBRARIES, distributed=True)
def run(cfg: GRPOConfig, inputs: Inputs, ctx: StageContext) -> Artifact:
    """Sample groups of completions, score them with the rewards, and push the policy toward the
    better ones; produce the trained adapter (or model)."""
    from trl import GRPOConfig as TrlGRPOConfig
    from trl import GRPOTrainer

    return train_online(cfg, inputs, ctx, GRPOTrainer, TrlGRPOConfig,
                        f"GRPO ({cfg.loss_type} loss, {cfg.importance_sampling_level}-level ratios)")
