"""What the preference-style trainers share (DPO, KTO): their training settings, and how the policy to
train and its frozen reference follow from the stage's input.

  - an adapter (e.g. from sft): that adapter keeps training, and the reference is the same adapter
    frozen on the same base, i.e. the SFT policy (trl copies it into a "ref" adapter);
  - a model: a new LoRA on it (method lora) or the whole model (method full), and the reference is
    that model; `reference: base` scores against the model under the input instead (comparison only).
"""
from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from enum import Enum
from typing import Optional

from omegaconf import MISSING

from pipeline.artifact import Artifact, ArtifactKind
from pipeline.data import mixture
from pipeline.data.datasets import prepared
from pipeline.engine.context import StageContext
from pipeline.engine.contract import StageConfig
from pipeline.models.loading import is_vision, load_causal_lm, save_tokenizer
from pipeline.ranges import at_least, positive, one_of, setting
from pipeline.stages.train.sft import Method
from pipeline.training import checkpoints
from pipeline.training.checkpoints import CheckpointSpec
from pipeline.training.common import SCHEDULERS, LoraSpec, device_args, lora_config, loss_curve, save_policy
from pipeline.training.health import HealthMonitor
from pipeline.training.vision import VisionSpec


class Reference(str, Enum):
    input = "input"   # the policy this stage receives, frozen (the SFT policy for an SFT adapter)
    base = "base"     # the model under the input adapter / the model the input was tuned from


@dataclass
class PolicyTraining(StageConfig):
    """Settings of a stage that trains the policy it receives on preference-style data."""

    method: Method = setting(Method.lora, "lora: continue an input adapter, or a new LoRA on a model")
    eval_limit: Optional[int] = at_least(1, MISSING, help="score the first N held-out records (null: all)")
    max_steps: int = at_least(1, MISSING, also=(-1,), help="-1: train num_train_epochs instead")
    num_train_epochs: float = positive(1.0, help="used when max_steps is -1")
    learning_rate: float = positive(MISSING, help="peak learning rate")
    per_device_train_batch_size: int = at_least(1, MISSING, help="pairs per step")
    per_device_eval_batch_size: int = at_least(1, 16, help="held-out pairs per scoring batch")
    gradient_accumulation_steps: int = at_least(1, 1, help="batches per optimizer step")
    max_length: int = at_least(1, MISSING, help="prompt + completion tokens; longer pairs are cut at the end")
    warmup_steps: float = at_least(0, 0.1, help="< 1: a ratio of all steps")
    lr_scheduler_type: str = one_of("cosine", SCHEDULERS, help="transformers' scheduler name")
    weight_decay: float = at_least(0, 0.0, help="AdamW weight decay")
    max_grad_norm: float = positive(1.0, help="gradients clipped to this norm")
    logging_steps: int = at_least(1, 10, help="steps between loss rows")
    gradient_checkpointing: Optional[bool] = setting(None, "null: on for GPUs and models of 1B params and more")
    checkpoint: CheckpointSpec = setting(factory=CheckpointSpec,
                                         help="mid-stage checkpoints in the stage's temporary store folder; a re-run "
                                              "resumes")
    lora: LoraSpec = setting(factory=LoraSpec, help="LoRA settings of a new adapter; an input adapter keeps its own")
    vision: VisionSpec = setting(factory=VisionSpec, help="a vision-language model: which image-side parts a new "
                                                          "adapter trains")

    def check_family(self, where: str, folder) -> None:
        if self.method == Method.lora:
            self.lora.check_family(f"{where}.lora", folder)


@dataclass
class PreferenceTraining(PolicyTraining):
    """... against a frozen reference policy."""

    reference: Reference = setting(Reference.input,
                                   "input: the input policy, frozen | base: the model under the input adapter (for "
                                   "comparison only)")
    beta: float = positive(0.1, help="strength of the pull toward the reference (higher: stay closer)")


def model_artifact(path: str) -> Artifact:
    return Artifact(kind="model", path=path, fingerprint="")


def trainable_policy(cfg: PolicyTraining, source: Artifact, ctx: StageContext):
    """(model to train, peft_config for a new adapter or None, description): an input adapter keeps
    training (method lora), else a new LoRA on the input model, or the whole model (method full)."""
    from peft import PeftModel

    under = source.model_under()  # what the input sits on
    if source.kind == ArtifactKind.adapter and cfg.method == Method.lora:
        model = PeftModel.from_pretrained(load_causal_lm(model_artifact(under), ctx.model, ctx.device),
                                          source.path, is_trainable=True)
        return model, None, "continuing the input adapter"
    model = load_causal_lm(source, ctx.model, ctx.device, merge_adapter=True)
    if cfg.method == Method.lora:
        vision = is_vision(ctx.model, under)  # a VLM: LoRA on its language model only
        peft_config = lora_config(cfg.lora, ctx.model.lora_target_modules, vision_model=model if vision else None,
                                  vision=cfg.vision, model=model, log=ctx.log)
        return model, peft_config, "new LoRA"
    return model, None, "full model"


def policy_and_reference(cfg: PreferenceTraining, source: Artifact, ctx: StageContext):
    """(model to train, peft_config for a new adapter, explicit reference model or None, description).

    A reference of None lets trl derive it from the policy: for a PeftModel loaded with its
    adapter, trl copies that adapter into a frozen "ref" adapter; for a new adapter, trl disables it.
    """
    base_reference = cfg.reference == Reference.base and (source.kind == ArtifactKind.adapter or source.base_model != source.path)
    reference = load_causal_lm(model_artifact(source.base_model), ctx.model, ctx.device).eval() \
        if base_reference else None
    ref_text = f"reference: the base {source.base_model}" if base_reference else "reference: the input policy, frozen"
    model, peft_config, how = trainable_policy(cfg, source, ctx)
    if reference is None and cfg.method == Method.full:  # full training: a second, frozen copy of the input
        reference = load_causal_lm(source, ctx.model, ctx.device, merge_adapter=True).eval()
    return model, peft_config, reference, f"{how}; {ref_text}"


def preference_pairs(spec, hardware: dict, limit: int | None = None, tagged: bool = False):
    """Preference records in trl's conversational form (Arrow, never a Python list); the three keys trl reads
    (`tagged`: and a mixture's entry tags, which Run.untag takes off)."""
    rows = prepared(spec, "preference", hardware=hardware, desc="preference pairs")
    tags = [mixture.SOURCE_COLUMN] if tagged and mixture.SOURCE_COLUMN in rows.column_names else []
    rows = rows.select_columns(["prompt", "chosen", "rejected", *tags])
    return rows.select(range(limit)) if limit and limit < len(rows) else rows


def trainer_arguments(cfg: PolicyTraining, source: Artifact, ctx: StageContext) -> dict:
    """The trl config arguments every preference-style stage sets the same way (its loss settings aside)."""
    return dict(
        output_dir=str(ctx.out_dir / "trainer"), max_steps=cfg.max_steps, num_train_epochs=cfg.num_train_epochs,
        learning_rate=cfg.learning_rate, per_device_train_batch_size=cfg.per_device_train_batch_size,
        per_device_eval_batch_size=cfg.per_device_eval_batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps, max_length=cfg.max_length,
        warmup_steps=cfg.warmup_steps, lr_scheduler_type=cfg.lr_scheduler_type, weight_decay=cfg.weight_decay,
        max_grad_norm=cfg.max_grad_norm, logging_steps=cfg.logging_steps, logging_first_step=True,
        eval_strategy="no", seed=ctx.seed, **checkpoints.trainer_args(cfg.checkpoint),
        **device_args(ctx.device, ctx.hardware, cfg.gradient_checkpointing, source, ctx.model.params_b))


class Run:
    """One trainer's run: its callbacks (tracker, health, checkpoints), then train, score, save."""

    def __init__(self, cfg: PolicyTraining, ctx: StageContext):
        self.cfg, self.ctx = cfg, ctx
        self.health = HealthMonitor(cfg.max_steps, cfg.max_grad_norm, cfg.lr_scheduler_type, cfg.warmup_steps, ctx.log)
        self.sources: list[int] | None = None
        self.spec = None

    def untag(self, dataset, spec):
        """The training rows without a mixture's entry tags; finish() reports the share each entry gave."""
        dataset, self.sources = mixture.split_sources(dataset)
        self.spec = spec
        return dataset

    def callbacks(self) -> list:
        return [self.ctx.tracker.trainer_callback(self.ctx.name), self.health.callback(),
                checkpoints.callback(self.cfg.checkpoint)]

    def finish(self, trainer, source: Artifact, tokenizer, train_set, eval_set, score=None) -> dict:
        """Train (resuming a checkpoint), score the held-out set (`score`: trainer.evaluate()'s figures under
        short names, default `held_out`), save the policy and tokenizer; the metrics every such stage reports."""
        cfg, ctx = self.cfg, self.ctx
        draws = mixture.count_draws(trainer, self.sources, self.spec)
        started = time.time()
        result = trainer.train(resume_from_checkpoint=checkpoints.resume_point(ctx.out_dir, cfg.max_steps, ctx.log))
        runtime = round(time.time() - started, 2)
        evaluated = (score or held_out)(trainer.evaluate()) if eval_set is not None else {}
        save_policy(trainer, ctx.out_dir, lora=cfg.method == Method.lora)  # every rank: gathered, rank 0 writes
        if trainer.is_world_process_zero():
            save_tokenizer(tokenizer, source, ctx.out_dir)
        shutil.rmtree(ctx.out_dir / "trainer", ignore_errors=True)
        return {"train_loss": float(result.training_loss), "train_steps": int(result.global_step),
                "train_runtime": runtime, "train_records": len(train_set),
                **loss_curve(trainer.state.log_history), **evaluated,
                "eval_records": len(eval_set) if eval_set is not None else 0, "health_warnings": self.health.warnings,
                **(draws.metrics() if draws else {})}


def held_out(results: dict) -> dict[str, float]:
    """trainer.evaluate()'s pair figures under short names (DPO, ORPO, SimPO log the same keys)."""
    names = {"eval_loss": "eval_loss", "eval_rewards/margins": "eval_reward_margin",
             "eval_rewards/accuracies": "eval_reward_accuracy", "eval_rewards/chosen": "eval_reward_chosen",
             "eval_rewards/rejected": "eval_reward_rejected", "eval_logps/chosen": "eval_logps_chosen",
             "eval_logps/rejected": "eval_logps_rejected"}
    return {short: round(float(results[key]), 4) for key, short in names.items() if key in results}
