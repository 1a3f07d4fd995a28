"""Training on preference pairs with no reference model (ORPO, SimPO/CPO): the policy alone scores
chosen against rejected, so only one model is in memory (DPO and KTO hold a frozen reference too).
The stage files (pipeline/stages/train/orpo.py, simpo.py) name the trainer and its loss settings;
this runs it the same way for both."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from omegaconf import MISSING

from pipeline.artifact import Artifact
from pipeline.data.datasets import DatasetSpec
from pipeline.engine.context import Inputs, StageContext
from pipeline.models.loading import load_tokenizer
from pipeline.models.memory import Workload
from pipeline.ranges import setting
from pipeline.stages.train.sft import Method
from pipeline.training.common import policy_artifact
from pipeline.stages.train.preference import PolicyTraining, Run, preference_pairs, trainable_policy, trainer_arguments


@dataclass
class ReferenceFree(PolicyTraining):
    """Settings of a reference-free stage: its pairs, and one model with chosen and rejected through it together."""

    dataset: DatasetSpec = field(default=MISSING, metadata={
        "help": "{\"prompt\", \"chosen\", \"rejected\"}: strings or messages", "purpose": "preference"})
    eval_dataset: Optional[DatasetSpec] = setting(MISSING, "held-out pairs scored after training (null: skip)",
                                                  purpose="preference")

    def memory_profile(self, sources):
        return Workload(kind="train", method=self.method.value, batch=2 * self.per_device_train_batch_size,
                        length=self.max_length, lora_rank=self.lora.r, gradient_checkpointing=self.gradient_checkpointing)


def train_on_pairs(cfg, inputs: Inputs, ctx: StageContext, trainer_class, config_class, loss_args: dict[str, Any],
                   describe: str) -> Artifact:
    """Run `trainer_class` (trl's ORPOTrainer or CPOTrainer) on the pairs; the adapter or model and its
    held-out reward margin and accuracy."""
    source = inputs.primary
    tokenizer = load_tokenizer(source.tokenizer_dir(), ctx.model)
    train_set = preference_pairs(cfg.dataset, ctx.hardware, tagged=True)
    eval_set = preference_pairs(cfg.eval_dataset, ctx.hardware, cfg.eval_limit) if cfg.eval_dataset is not None else None
    args = config_class(**trainer_arguments(cfg, source, ctx), **loss_args)
    model, peft_config, how = trainable_policy(cfg, source, ctx)
    ctx.log(f"{how}; no reference model; {describe}, {len(train_set)} pairs")
    run = Run(cfg, ctx)
    train_set = run.untag(train_set, cfg.dataset)
    trainer = trainer_class(model=model, args=args, train_dataset=train_set, eval_dataset=eval_set,
                            processing_class=tokenizer, peft_config=peft_config, callbacks=run.callbacks())
    metrics = run.finish(trainer, source, tokenizer, train_set, eval_set)
    ctx.log(f"loss {metrics.get('loss_first', float('nan')):.3f} -> {metrics.get('loss_last', float('nan')):.3f} in "
            f"{metrics['train_steps']} steps; held-out reward margin {metrics.get('eval_reward_margin', float('nan'))}, "
            f"accuracy {metrics.get('eval_reward_accuracy', float('nan'))}")
    return policy_artifact(source, ctx.out_dir, cfg.method == Method.full,
                           cfg.lora if peft_config is not None else None, metrics,
                           {"trained": how, "reference": None, **loss_args})
