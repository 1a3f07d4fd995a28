"""KTO (Kahneman-Tversky Optimization, Ethayarajh et al. 2024) with trl's KTOTrainer: thumbs-up /
thumbs-down data, no pairs needed.

    python main.py recipe=sft_kto
    python main.py recipe=sft_kto stages.kto.desirable_weight=1.33   # fewer good rows than bad ones

Trains on `{prompt, completion, label}` rows (data purpose "unpaired"; `label` true for a desirable
completion). Preference pairs work too: each pair becomes one desirable and one undesirable row
(trl's `unpair_preference_dataset`). The policy and its frozen reference follow from the input as in
DPO (pipeline/stages/train/preference.py): after SFT, the reference is the SFT policy, so at the first
step both rewards and the KL estimate are 0 and the loss is 1 - sigmoid(0) = 0.5 on every row.
KTO estimates its KL term from mismatched completions of one batch, so a batch needs two rows or
more (checked at plan time). After training the held-out rows are scored: reward margin
(desirable minus undesirable) and KL.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from omegaconf import MISSING

from pipeline.artifact import Artifact
from pipeline.data.datasets import DatasetSpec, prepared
from pipeline.engine.context import Inputs, StageContext
from pipeline.engine.registry import TRAINING_LIBRARIES, stage
from pipeline.errors import ConfigError
from pipeline.models.loading import load_tokenizer
from pipeline.models.memory import Workload
from pipeline.ranges import one_of, positive, setting
from pipeline.stages.train.sft import Method, trained_kind
from pipeline.training.common import policy_artifact
from pipeline.stages.train.preference import PreferenceTraining, Run, policy_and_reference, trainer_arguments

LOSS_TYPES = ("kto", "apo_zero_unpaired")  # trl 1.16's KTOConfig.loss_type


@dataclass
class KTOConfig(PreferenceTraining):
    kind: str = setting("kto", "the stage kind")
    dataset: DatasetSpec = field(default=MISSING, metadata={
        "help": "{\"prompt\", \"completion\", \"label\": true|false}, or preference pairs (split in two)",
        "purpose": "unpaired"})
    eval_dataset: Optional[DatasetSpec] = setting(MISSING, "held-out rows scored after training (null: skip)",
                                                  purpose="unpaired")
    loss_type: str = one_of("kto", LOSS_TYPES, help="kto | apo_zero_unpaired")
    desirable_weight: float = positive(1.0, help="loss weight of desirable rows (raise it when they are fewer)")
    undesirable_weight: float = positive(1.0, help="loss weight of undesirable rows")

    def validate(self, where: str, earlier: dict) -> None:
        if self.per_device_train_batch_size < 2:
            raise ConfigError(f"{where}.per_device_train_batch_size: {self.per_device_train_batch_size}; valid: >= 2 "
                              f"(KTO estimates its KL term from other rows of the same batch)")

    def memory_profile(self, sources):
        # each row and its mismatched KL completion go through the policy; the reference holds no activations
        return Workload(kind="train", method=self.method.value, batch=2 * self.per_device_train_batch_size,
                        length=self.max_length, lora_rank=self.lora.r, gradient_checkpointing=self.gradient_checkpointing,
                        extra_weights=1.0 if self.method == Method.full else 0.0)


def unpaired_rows(spec: DatasetSpec, hardware: dict, limit: int | None = None):
    """The rows trl reads ({prompt, completion, label}, Arrow); preference pairs are split in two."""
    from trl.data_utils import unpair_preference_dataset

    rows = prepared(spec, "unpaired", hardware=hardware, desc="unpaired rows")  # a mixture's tags: dropped below
    if "chosen" in rows.column_names:
        rows = unpair_preference_dataset(rows.select_columns(["prompt", "chosen", "rejected"]))
    rows = rows.select_columns(["prompt", "completion", "label"])
    return rows.select(range(limit)) if limit and limit < len(rows) else rows


def held_out(results: dict[str, Any]) -> dict[str, float]:
    """trainer.evaluate()'s KTO figures under short names."""
    names = {"eval_loss": "eval_loss", "eval_rewards/margins": "eval_reward_margin",
             "eval_rewards/chosen": "eval_reward_desirable", "eval_rewards/rejected": "eval_reward_undesirable",
             "eval_kl": "eval_kl"}
    return {short: round(float(results[key]), 4) for key, short in names.items() if key in results}


@stage("kto", config=KTOConfig, consumes={"model", "adapter"}, produces=trained_kind,
       libraries=TRAINING_LIBRARIES, distributed=True)
def run(cfg: KTOConfig, inputs: Inputs, ctx: StageContext) -> Artifact:
    """Train the input policy on desirable/undesirable completions against a frozen reference; produce the
    adapter (or model) and its held-out reward margin."""
    from trl import KTOConfig as TrlKTOConfig
    from trl import KTOTrainer

    source = inputs.primary
    tokenizer = load_tokenizer(source.tokenizer_dir(), ctx.model)
    train_set = unpaired_rows(cfg.dataset, ctx.hardware)
    eval_set = unpaired_rows(cfg.eval_dataset, ctx.hardware, cfg.eval_limit) if cfg.eval_dataset is not None else None
    args = TrlKTOConfig(**trainer_arguments(cfg, source, ctx), beta=cfg.beta, loss_type=cfg.loss_type,
                        desirable_weight=cfg.desirable_weight, undesirable_weight=cfg.undesirable_weight)
    model, peft_config, reference, how = policy_and_reference(cfg, source, ctx)
    desirable = sum(train_set["label"])
    ctx.log(f"{how}; beta {cfg.beta}, loss {cfg.loss_type}, {desirable} desirable and "
            f"{len(train_set) - desirable} undesirable rows")
    run = Run(cfg, ctx)
    trainer = KTOTrainer(model=model, ref_model=reference, args=args, train_dataset=train_set, eval_dataset=eval_set,
                         processing_class=tokenizer, peft_config=peft_config, callbacks=run.callbacks())
    metrics = run.finish(trainer, source, tokenizer, train_set, eval_set, score=held_out)
    metrics["train_desirable"] = desirable
    ctx.log(f"loss {metrics.get('loss_first', float('nan')):.3f} -> {metrics.get('loss_last', float('nan')):.3f} in "
            f"{metrics['train_steps']} steps; held-out reward margin {metrics.get('eval_reward_margin', float('nan'))}")
    meta = {"reference": cfg.reference.value, "trained": how, "beta": cfg.beta, "loss_type": cfg.loss_type}
    return policy_artifact(source, ctx.out_dir, cfg.method == Method.full,
                           cfg.lora if peft_config is not None else None, metrics, meta)
