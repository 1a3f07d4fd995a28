"""Training on preference pairs with no reference model (ORPO, SimPO/CPO): the policy alone scores
chosen against rejected, so only one model is in memory (DPO and KTO hold a frozen reference too).
The stage files (pipeline/stages/train/orpo.py, simpo.py) name the trainer and its loss settings;
this runs it the same way for both."""
from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from typing import Any, Optional

from omegaconf import MISSING

from pipeline.artifact import Artifact
from pipeline.data.datasets import DatasetSpec
from pipeline.engine.context import Inputs, StageContext
from pipeline.models.loading import load_tokenizer, save_tokenizer
from pipeline.models.memory import Workload
from pipeline.ranges import setting
from pipeline.stages.train.sft import Method
from pipeline.training import checkpoints
from pipeline.training.common import device_args, loss_curve, policy_artifact, save_policy
from pipeline.training.health import HealthMonitor
from pipeline.training.preference import PolicyTraining, held_out, preference_pairs, trainable_policy


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
    train_set = preference_pairs(cfg.dataset, ctx.hardware)
    eval_set = preference_pairs(cfg.eval_dataset, ctx.hardware, cfg.eval_limit) if cfg.eval_dataset is not None else None
    args = config_class(
        output_dir=str(ctx.out_dir / "trainer"), max_steps=cfg.max_steps, num_train_epochs=cfg.num_train_epochs,
        learning_rate=cfg.learning_rate, per_device_train_batch_size=cfg.per_device_train_batch_size,
        per_device_eval_batch_size=cfg.per_device_eval_batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps, max_length=cfg.max_length,
        warmup_steps=cfg.warmup_steps, lr_scheduler_type=cfg.lr_scheduler_type, weight_decay=cfg.weight_decay,
        max_grad_norm=cfg.max_grad_norm, logging_steps=cfg.logging_steps, logging_first_step=True,
        eval_strategy="no", seed=ctx.seed, **loss_args, **checkpoints.trainer_args(cfg.checkpoint),
        **device_args(ctx.device, ctx.hardware, cfg.gradient_checkpointing, source, ctx.model.params_b),
    )
    model, peft_config, how = trainable_policy(cfg, source, ctx)
    ctx.log(f"{how}; no reference model; {describe}, {len(train_set)} pairs")
    health = HealthMonitor(cfg.max_steps, cfg.max_grad_norm, cfg.lr_scheduler_type, cfg.warmup_steps, ctx.log)
    trainer = trainer_class(model=model, args=args, train_dataset=train_set, eval_dataset=eval_set,
                            processing_class=tokenizer, peft_config=peft_config,
                            callbacks=[ctx.tracker.trainer_callback(ctx.name), health.callback(),
                                       checkpoints.callback(cfg.checkpoint)])
    started = time.time()
    result = trainer.train(resume_from_checkpoint=checkpoints.resume_point(ctx.out_dir, cfg.max_steps, ctx.log))
    runtime = round(time.time() - started, 2)
    evaluated = held_out(trainer.evaluate()) if eval_set is not None else {}
    save_policy(trainer, ctx.out_dir, lora=cfg.method == Method.lora)
    if trainer.is_world_process_zero():
        save_tokenizer(tokenizer, source, ctx.out_dir)
    shutil.rmtree(ctx.out_dir / "trainer", ignore_errors=True)
    metrics = {"train_loss": float(result.training_loss), "train_steps": int(result.global_step),
               "train_runtime": runtime, "train_records": len(train_set),
               **loss_curve(trainer.state.log_history), **evaluated,
               "eval_records": len(eval_set) if eval_set is not None else 0, "health_warnings": health.warnings}
    ctx.log(f"loss {metrics.get('loss_first', float('nan')):.3f} -> {metrics.get('loss_last', float('nan')):.3f} in "
            f"{metrics['train_steps']} steps; held-out reward margin {metrics.get('eval_reward_margin', float('nan'))}, "
            f"accuracy {metrics.get('eval_reward_accuracy', float('nan'))}")
    return policy_artifact(source, ctx.out_dir, cfg.method == Method.full,
                           cfg.lora if peft_config is not None else None, metrics,
                           {"trained": how, "reference": None, **loss_args})
