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

import copy
from dataclasses import dataclass
from typing import List, Optional
from pipeline.artifact import Artifact
from pipeline.engine.context import Inputs, StageContext
from pipeline.engine.registry import TRAINING_LIBRARIES, stage
from pipeline.errors import ConfigError
from pipeline.ranges import at_least, one_of, setting
from pipeline.stages.train.online_rl import OnlineRL, train_online
from pipeline.stages.train.sft import trained_kind
from pipeline.training.tool_env import as_function, give_parser, tool_names

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
    tools: List[str] = setting(factory=list, help="tools in the loop (calculator, get_weather, search_knowledge): the "
                                                  "policy's calls run and their results go back to it; reward with "
                                                  "tool_use")
    max_tool_calling_iterations: Optional[int] = at_least(1, None, help="tool rounds per completion (null: until "
                                                                         "the completion budget)")

    def validate(self, where: str, earlier: dict) -> None:
        super().validate(where, earlier)
        unknown = [t for t in self.tools if t not in tool_names()]
        if unknown:
            raise ConfigError(f"{where}.tools: {unknown} are not tools of the project's set; valid: "
                              f"{', '.join(tool_names())}")
        if self.tools and self.difficulty.samples:
            raise ConfigError(f"{where}.difficulty.samples: the pass-rate measurement samples single replies, not "
                              f"the tool loop; set it to 0 with tools")
        if self.loss_type in SEQUENCE_LOSSES and self.importance_sampling_level != "sequence":
            raise ConfigError(f"{where}.loss_type: {self.loss_type} works on sequence-level ratios; set "
                              f"importance_sampling_level: sequence")

    def trainer_settings(self) -> dict:
        return {"loss_type": self.loss_type, "importance_sampling_level": self.importance_sampling_level,
                "scale_rewards": self.scale_rewards,
                **({"max_tool_calling_iterations": self.max_tool_calling_iterations} if self.tools else {})}

    def check_tokenizer(self, where: str, tokenizer) -> None:
        if self.tools:
            self._parser(f"{where}.tools", copy.copy(tokenizer))

    @staticmethod
    def _parser(where: str, tokenizer) -> str:
        try:
            return give_parser(tokenizer)
        except ValueError as e:
            raise ConfigError(f"{where}: {e}") from None

    def trainer_inputs(self, tokenizer, log) -> dict:
        if not self.tools:
            return {}
        parser = self._parser("stages.grpo.tools", tokenizer)
        log(f"tools in the loop: {', '.join(self.tools)}; calls parsed with {parser} response template")
        return {"tools": [as_function(name) for name in self.tools]}


@stage("grpo", config=GRPOConfig, consumes={"model", "adapter", "reward_model"}, produces=trained_kind,
       libraries=TRAINING_LIBRARIES, distributed=True)
def run(cfg: GRPOConfig, inputs: Inputs, ctx: StageContext) -> Artifact:
    """Sample groups of completions, score them with the rewards, and push the policy toward the
    better ones; produce the trained adapter (or model)."""
    from trl import GRPOConfig as TrlGRPOConfig
    from trl import GRPOTrainer

    return train_online(cfg, inputs, ctx, GRPOTrainer, TrlGRPOConfig,
                        f"GRPO ({cfg.loss_type} loss, {cfg.importance_sampling_level}-level ratios)")
