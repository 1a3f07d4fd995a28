"""A reward model: the chain's model with a one-score head (sequence classification), trained with trl's
RewardTrainer on preference pairs (Bradley-Terry: -log sigmoid(score(chosen) - score(rejected))).

    python main.py recipe=reward_rloo
    python main.py recipe=reward_rloo stages.reward.method=full stages.reward.max_steps=300

It starts from its input (an SFT adapter merged into its base, or a model); method lora trains a new
LoRA plus the new head, then merges both, so the artifact is one folder any stage loads as a scorer.
The held-out pairs are scored before and after training (the share ranked right, the mean margin), and
an RL stage takes it as a reward: `rewards: [correctness, {stage: reward, weight: 0.5}]`.
"""
from __future__ import annotations

import copy
import shutil
import time
from dataclasses import dataclass, field
from typing import Optional

from omegaconf import MISSING

from pipeline.artifact import Artifact, ArtifactKind
from pipeline.data.datasets import DatasetSpec
from pipeline.engine.context import Inputs, StageContext
from pipeline.engine.registry import TRAINING_LIBRARIES, stage
from pipeline.errors import ConfigError
from pipeline.models.loading import load_causal_lm, load_tokenizer, save_tokenizer
from pipeline.models.memory import Workload
from pipeline.models.vision import folder_is_vision
from pipeline.ranges import at_least, setting
from pipeline.stages.train.preference import PolicyTraining, Run, preference_pairs, trainer_arguments
from pipeline.stages.train.sft import Method
from pipeline.training import checkpoints
from pipeline.training.common import lora_config


@dataclass
class RewardStageConfig(PolicyTraining):
    kind: str = setting("reward", "the stage kind")
    dataset: DatasetSpec = field(default=MISSING, metadata={
        "help": "{\"prompt\", \"chosen\", \"rejected\"}: strings or messages", "purpose": "preference"})
    eval_dataset: Optional[DatasetSpec] = setting(MISSING, "held-out pairs scored before and after training "
                                                           "(null: skip)", purpose="preference")
    center_rewards_coefficient: Optional[float] = at_least(0, None, help="pulls the mean score toward 0 (trl; "
                                                                        "null: off)")

    def check_family(self, where: str, folder) -> None:
        super().check_family(where, folder)
        if folder is not None and folder_is_vision(folder):
            raise ConfigError(f"{where}: a reward model scores text; {folder} is a vision-language model "
                              "(train the reward model on its text sibling, or use verifiable rewards)")

    def memory_profile(self, sources):
        return Workload(kind="train", method=self.method.value, batch=2 * self.per_device_train_batch_size,
                        length=self.max_length, lora_rank=self.lora.r, gradient_checkpointing=self.gradient_checkpointing)


def scorer_from(source: Artifact, ctx: StageContext):
    """The input's weights (an adapter merged in) under a new one-score head: the backbone is copied in
    memory, the head starts at transformers' initialisation."""
    from transformers import AutoModelForSequenceClassification

    causal = load_causal_lm(source, ctx.model, ctx.device, merge_adapter=True)
    config = copy.deepcopy(causal.config)
    config.num_labels = 1
    scorer = AutoModelForSequenceClassification.from_config(config, dtype=causal.dtype)
    missing = scorer.base_model.load_state_dict(causal.base_model.state_dict(), strict=False)
    if missing.missing_keys:
        raise RuntimeError(f"stage {ctx.name}: the scorer's backbone has weights the model lacks: {missing.missing_keys[:3]}")
    return scorer.to(ctx.device)


def _heads(scorer) -> list[str]:
    """The new head's module names (everything beside the backbone; 'score' in most architectures)."""
    return [name for name, _ in scorer.named_children() if name != scorer.base_model_prefix]


def held_out(results: dict, suffix: str = "") -> dict[str, float]:
    names = {"eval_accuracy": "eval_pair_accuracy", "eval_margin": "eval_score_margin", "eval_loss": "eval_loss"}
    return {short + suffix: round(float(results[key]), 4) for key, short in names.items() if key in results}


@stage("reward", config=RewardStageConfig, consumes={"model", "adapter"}, produces=ArtifactKind.reward_model,
       libraries=TRAINING_LIBRARIES, distributed=True)
def run(cfg: RewardStageConfig, inputs: Inputs, ctx: StageContext) -> Artifact:
    """Train a scorer on the pairs; produce the merged reward model with its held-out pair accuracy."""
    from trl import RewardConfig, RewardTrainer

    source = inputs.primary
    tokenizer = load_tokenizer(source.tokenizer_dir(), ctx.model)
    train_set = preference_pairs(cfg.dataset, ctx.hardware, tagged=True)
    eval_set = preference_pairs(cfg.eval_dataset, ctx.hardware, cfg.eval_limit) if cfg.eval_dataset is not None else None
    args = RewardConfig(**trainer_arguments(cfg, source, ctx), center_rewards_coefficient=cfg.center_rewards_coefficient)
    scorer = scorer_from(source, ctx)
    peft_config = None
    if cfg.method == Method.lora:
        peft_config = lora_config(cfg.lora, ctx.model.lora_target_modules, model=scorer, log=ctx.log)
        peft_config.task_type, peft_config.modules_to_save = "SEQ_CLS", _heads(scorer)
    ctx.log(f"reward model from {source.kind} {source.path}: {'LoRA + head' if peft_config else 'full model'}; "
            f"{len(train_set)} pairs")
    run_ = Run(cfg, ctx)
    train_set = run_.untag(train_set, cfg.dataset)
    trainer = RewardTrainer(model=scorer, args=args, train_dataset=train_set, eval_dataset=eval_set,
                            processing_class=tokenizer, peft_config=peft_config, callbacks=run_.callbacks())
    before = held_out(trainer.evaluate(), "_before") if eval_set is not None else {}
    started = time.time()
    result = trainer.train(resume_from_checkpoint=checkpoints.resume_point(ctx.out_dir, cfg.max_steps, ctx.log))
    runtime = round(time.time() - started, 2)
    after = held_out(trainer.evaluate()) if eval_set is not None else {}
    if trainer.is_world_process_zero():
        trained = trainer.accelerator.unwrap_model(trainer.model)
        trained = trained.merge_and_unload() if peft_config is not None else trained
        trained.save_pretrained(str(ctx.out_dir))
        save_tokenizer(tokenizer, source, ctx.out_dir)
    shutil.rmtree(ctx.out_dir / "trainer", ignore_errors=True)
    metrics = {"train_loss": float(result.training_loss), "train_steps": int(result.global_step),
               "train_runtime": runtime, "train_records": len(train_set), **before, **after,
               "eval_records": len(eval_set) if eval_set is not None else 0, "health_warnings": run_.health.warnings}
    ctx.log(f"held-out pairs ranked right {before.get('eval_pair_accuracy_before', float('nan')):.1%} -> "
            f"{after.get('eval_pair_accuracy', float('nan')):.1%}, margin {after.get('eval_score_margin', float('nan'))}")
    return Artifact(kind=ArtifactKind.reward_model, path=str(ctx.out_dir), fingerprint="", format="hf",
                    base_model=source.base_model, metrics=metrics,
                    meta={"trained": "LoRA + head, merged" if peft_config else "full model", "heads": _heads(scorer)})
