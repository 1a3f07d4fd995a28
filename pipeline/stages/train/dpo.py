"""DPO (Direct Preference Optimization, Rafailov et al. 2023) with trl's DPOTrainer.

    python main.py recipe=sft_dpo
    python main.py recipe=sft_dpo stages.dpo.beta=0.3 stages.dpo.loss_type=ipo

Trains on prompt/chosen/rejected pairs (data purpose "preference"): the policy is pushed to raise
the likelihood of `chosen` over `rejected`, relative to a frozen reference policy. What is
trained and what the reference is follow from the input:
  - an adapter (e.g. from sft): that adapter keeps training, and the reference is the same
    adapter frozen on the same base, i.e. the SFT policy. Policy and reference are equal at step
    0, so the first loss is ln 2 = 0.693 and the reward accuracy starts at 0 (no pair is yet
    preferred). Scoring against the bare base instead (LLaMA-Factory #8974) makes the SFT gains
    look like DPO rewards from the first step; `reference: base` does that, for comparison only;
  - a model: a new LoRA on it (method lora) or the whole model (method full), and the reference
    is that model (or, with `reference: base`, the model it was tuned from).
After training the held-out pairs (`eval_dataset`) are scored: reward margin and accuracy.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from omegaconf import MISSING

from pipeline.artifact import Artifact
from pipeline.data.datasets import DatasetSpec, load
from pipeline.engine.context import Inputs, StageContext
from pipeline.engine.registry import TRAINING_LIBRARIES, stage
from pipeline.models.loading import is_vision, load_processor, load_tokenizer
from pipeline.models.memory import Workload
from pipeline.ranges import at_least, between, one_of, setting
from pipeline.stages.train.sft import Method, trained_kind
from pipeline.training.common import (
    policy_artifact,
)
from pipeline.training.images import image_dataset, preference_rows
from pipeline.stages.train.preference import PreferenceTraining, Run, policy_and_reference, preference_pairs, trainer_arguments

# The loss types trl 1.16's DPOTrainer implements (DPOConfig.loss_type); checked at plan time so a
# typo fails before any model is loaded.
LOSS_TYPES = ("sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot",
              "aot_unpaired", "apo_zero", "apo_down", "discopop", "sigmoid_norm")


@dataclass
class DPOConfig(PreferenceTraining):
    kind: str = setting("dpo", "the stage kind")
    dataset: DatasetSpec = field(default=MISSING, metadata={"help": "{\"prompt\", \"chosen\", \"rejected\"}: strings or messages", "purpose": "preference"})
    eval_dataset: Optional[DatasetSpec] = setting(MISSING, "held-out pairs scored after training (null: skip)", purpose="preference")
    loss_type: str = one_of("sigmoid", LOSS_TYPES,
                            help="sigmoid | hinge | ipo | exo_pair | nca_pair | robust | bco_pair | sppo_hard | aot | "
                                 "aot_unpaired | apo_zero | apo_down | discopop | sigmoid_norm")
    label_smoothing: float = between(0.0, 0, 0.5, high_open=True,
                                     help="robust / exo_pair: assumed share of flipped labels")
    sft_weight: float = at_least(0, 0.0, help="> 0: add trl's \"sft\" loss on chosen (RPO-style) with this weight")
    def memory_profile(self, sources):
        # chosen and rejected go through the policy together; the reference's forward holds no activations
        return Workload(kind="train", method=self.method.value, batch=2 * self.per_device_train_batch_size,
                        length=self.max_length, lora_rank=self.lora.r, gradient_checkpointing=self.gradient_checkpointing,
                        extra_weights=1.0 if self.method == Method.full else 0.0)


def _image_pairs(spec: DatasetSpec, limit: int | None = None):
    """Preference records whose prompts carry images, as rows with lazily loaded images."""
    records = load(spec, "preference")
    return image_dataset(preference_rows(records[:limit] if limit else records))


def _trl_losses(cfg: DPOConfig) -> dict[str, Any]:
    if cfg.sft_weight > 0:
        return {"loss_type": [cfg.loss_type, "sft"], "loss_weights": [1.0, cfg.sft_weight]}
    return {"loss_type": [cfg.loss_type]}


def first_step(log_history: list[dict[str, Any]]) -> dict[str, float]:
    """Reward accuracy and margin of the first logged step (logging_first_step: computed with the
    weights before any update, so with the input policy as reference both start at 0)."""
    rows = [row for row in log_history if "rewards/accuracies" in row]
    if not rows:
        return {}
    return {"reward_accuracy_first": float(rows[0]["rewards/accuracies"]),
            "reward_margin_first": float(rows[0]["rewards/margins"]),
            "reward_accuracy_last": float(rows[-1]["rewards/accuracies"]),
            "reward_margin_last": float(rows[-1]["rewards/margins"])}


@stage("dpo", config=DPOConfig, consumes={"model", "adapter"}, produces=trained_kind,
       libraries=TRAINING_LIBRARIES, distributed=True)
def run(cfg: DPOConfig, inputs: Inputs, ctx: StageContext) -> Artifact:
    """Train the input policy on preference pairs against a frozen reference; produce the adapter
    (or model) and its reward margin/accuracy on the held-out pairs."""
    from trl import DPOConfig as TrlDPOConfig
    from trl import DPOTrainer

    source = inputs.primary
    vision = is_vision(ctx.model, source.model_under())
    if vision:  # image pairs: the processor renders them batch by batch (trl's vision preference collator)
        tokenizer = load_processor(source.tokenizer_dir(), ctx.model)
        train_set = _image_pairs(cfg.dataset)
        eval_set = _image_pairs(cfg.eval_dataset, cfg.eval_limit) if cfg.eval_dataset is not None else None
    else:
        tokenizer = load_tokenizer(source.tokenizer_dir(), ctx.model)
        train_set = preference_pairs(cfg.dataset, ctx.hardware, tagged=True)
        eval_set = preference_pairs(cfg.eval_dataset, ctx.hardware, cfg.eval_limit) if cfg.eval_dataset is not None else None
    args = TrlDPOConfig(**trainer_arguments(cfg, source, ctx), beta=cfg.beta, label_smoothing=cfg.label_smoothing,
                        **_trl_losses(cfg))
    # after the arguments: under ZeRO-3 the policy and reference are created partitioned (zero.Init)
    model, peft_config, reference, how = policy_and_reference(cfg, source, ctx)
    ctx.log(f"{how}; beta {cfg.beta}, loss {'+'.join(args.loss_type)}, {len(train_set)} pairs")
    run = Run(cfg, ctx)
    train_set = run.untag(train_set, cfg.dataset)
    trainer = DPOTrainer(model=model, ref_model=reference, args=args, train_dataset=train_set, eval_dataset=eval_set,
                         processing_class=tokenizer, peft_config=peft_config, callbacks=run.callbacks())
    metrics = run.finish(trainer, source, tokenizer, train_set, eval_set)
    metrics.update(first_step(trainer.state.log_history))
    ctx.log(f"loss {metrics.get('loss_first', float('nan')):.3f} -> {metrics.get('loss_last', float('nan')):.3f} in "
            f"{metrics['train_steps']} steps; held-out reward margin {metrics.get('eval_reward_margin', float('nan'))}, "
            f"accuracy {metrics.get('eval_reward_accuracy', float('nan'))}")
    meta = {"reference": cfg.reference.value, "trained": how, "beta": cfg.beta, "loss_type": list(args.loss_type)}
    return policy_artifact(source, ctx.out_dir, cfg.method == Method.full,
                           cfg.lora if peft_config is not None else None, metrics, meta)
