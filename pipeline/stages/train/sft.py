"""Supervised fine-tuning (full or LoRA) with trl's SFTTrainer.

    python main.py recipe=quickstart stages.sft.method=full

Each chat is rendered with the model's chat template and trained on every assistant turn (the
reply and its end-of-turn token; `assistant_turns: last` trains the final reply only), whatever
the template: pipeline/data/chat_tokens.py finds the turns, trl's SFTTrainer masks everything else.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from enum import Enum
from typing import Optional

from omegaconf import MISSING

from pipeline.artifact import Artifact, ArtifactKind
from pipeline.data.chat_tokens import tokenize_chats, tokenize_record, truncated
from pipeline.data import mixture
from pipeline.data.datasets import DatasetSpec, load, prepared
from pipeline.engine.context import Inputs, StageContext
from pipeline.engine.registry import TRAINING_LIBRARIES, stage
from pipeline.errors import ConfigError, PlanError
from pipeline.models.loading import is_vision, load_causal_lm, load_processor, load_tokenizer, save_tokenizer
from pipeline.models.vision import folder_is_vision
from pipeline.models.memory import Workload
from pipeline.ranges import at_least, one_of, positive, setting
from pipeline.training.common import (
    SCHEDULERS,
    LoraSpec,
    device_args,
    lora_config,
    loss_curve,
    rank_share,
    speed_args,
)
from pipeline.training import checkpoints
from pipeline.training.checkpoints import CheckpointSpec
from pipeline.training.health import HealthMonitor
from pipeline.training.images import image_dataset, sft_rows
from pipeline.training.vision import VisionSpec, freeze_image_side
from pipeline.engine.contract import StageConfig


class Method(str, Enum):
    full = "full"
    lora = "lora"


class AssistantTurns(str, Enum):
    all = "all"     # every assistant reply of a chat is trained (LLaMA-Factory, Axolotl default)
    last = "last"   # only the final reply; earlier turns are context (LLaMA-Factory's mask_history)


@dataclass
class SFTConfig(StageConfig):
    kind: str = setting("sft", "the stage kind")
    method: Method = setting(Method.lora, "lora: train a new adapter | full: every weight")
    dataset: DatasetSpec = setting(MISSING, "chat data: messages, alpaca or sharegpt records", purpose="sft")
    max_steps: int = at_least(1, MISSING, also=(-1,), help="-1: train num_train_epochs instead")
    num_train_epochs: float = positive(1.0, help="used when max_steps is -1")
    learning_rate: float = positive(MISSING,
                                    help="peak learning rate (LoRA 1e-4..2e-4, full 1e-5..5e-5; tiny models take more)")
    per_device_train_batch_size: int = at_least(1, MISSING, help="chats per step on each device")
    gradient_accumulation_steps: int = at_least(1, 1, help="batches per optimizer step")
    max_length: int = at_least(1, MISSING, help="tokens per chat; longer ones are cut")
    warmup_steps: float = at_least(0, 0.05, help="< 1: a ratio of all steps")
    lr_scheduler_type: str = one_of("cosine", SCHEDULERS, help="transformers' scheduler name")
    weight_decay: float = at_least(0, 0.0, help="AdamW weight decay")
    max_grad_norm: float = positive(1.0, help="gradients clipped to this norm")
    logging_steps: int = at_least(1, 10, help="steps between loss rows (terminal, metrics, W&B)")
    gradient_checkpointing: Optional[bool] = setting(None,
                                                     "null: on for GPUs and models of 1B params and more; off on CPUs")
    packing: bool = setting(False, "chats packed into max_length rows (trl's bfd), kept apart by position ids")
    padding_free: Optional[bool] = setting(None, "null: on where the model family keeps padding-free rows apart")
    liger: Optional[bool] = setting(None, "Liger kernels; null: on with CUDA where liger-kernel is installed")
    torch_compile: bool = setting(False, "compile the model with torch.compile (not measured here)")
    assistant_turns: AssistantTurns = setting(AssistantTurns.all,
                                              "all: every assistant reply is trained | last: only the final one")
    checkpoint: CheckpointSpec = setting(factory=CheckpointSpec,
                                         help="mid-stage checkpoints in the stage's temporary store folder; a re-run "
                                              "resumes")
    lora: LoraSpec = setting(factory=LoraSpec, help="LoRA settings of a new adapter")
    vision: VisionSpec = setting(factory=VisionSpec, help="a vision-language model: which image-side parts train")

    @classmethod
    def streamed_datasets(cls) -> set[str]:
        return {"dataset"}

    def memory_profile(self, sources):
        return Workload(kind="train", method=self.method.value, batch=self.per_device_train_batch_size,
                        length=self.max_length, lora_rank=self.lora.r, gradient_checkpointing=self.gradient_checkpointing)

    def check_family(self, where: str, folder) -> None:
        if self.method == Method.lora:
            self.lora.check_family(f"{where}.lora", folder)
        if self.dataset.streaming and folder_is_vision(folder):
            raise ConfigError(f"{where}.dataset.streaming: image chats are read whole (the processor batches them); "
                              f"streaming trains text models only: set streaming: false")

    def check_device(self, where: str, device: str) -> None:
        check_liger(self.liger, where, device)


def check_liger(liger: bool | None, where: str, device: str) -> None:
    import importlib.util

    if liger and device != "cuda":
        raise PlanError(f"{where}.liger: true, but Liger's Triton kernels need a CUDA GPU (device {device}); "
                        "set liger: null (on where they can run) or false")
    if liger and importlib.util.find_spec("liger_kernel") is None:
        raise PlanError(f"{where}.liger: true, but liger-kernel is not installed: pip install -e '.[liger]'")


def trained_kind(cfg) -> ArtifactKind:
    """What a training stage with a `method` produces: a whole model (full) or an adapter (lora, qlora)."""
    return ArtifactKind.model if cfg.method == Method.full else ArtifactKind.adapter


@stage("sft", config=SFTConfig, consumes={"model"}, produces=trained_kind, libraries=TRAINING_LIBRARIES,
       distributed=True)
def run(cfg: SFTConfig, inputs: Inputs, ctx: StageContext) -> Artifact:
    """Train the input model on chat data; produce a LoRA adapter or a full model."""
    return train(cfg, inputs, ctx, lambda: load_causal_lm(inputs.primary, ctx.model, ctx.device))


def train(cfg: SFTConfig, inputs: Inputs, ctx: StageContext, load_model, meta: dict | None = None,
          records: list[dict] | None = None, trainer_cls=None, trainer_kwargs: dict | None = None,
          logged: tuple[str, ...] = ()) -> Artifact:
    """SFTTrainer on the model that `load_model()` returns (full weights, or a LoRA on top; the qlora
    stage loads a 4-bit model). It is called after the trainer arguments exist, so that under
    DeepSpeed ZeRO-3 transformers creates the weights already partitioned (zero.Init), and under
    FSDP with cpu_ram_efficient_loading only rank 0 reads them.

    `records` replace cfg.dataset (distill's teacher-written chats); `trainer_cls` is an SFTTrainer
    subclass with its own loss (distill's logit mode); `logged` are extra log keys kept as
    `<key>_first` / `<key>_last` metrics."""
    from functools import partial

    from datasets import Dataset
    from trl import SFTConfig as TrlSFTConfig
    from trl import SFTTrainer

    source = inputs.primary
    tokenizer = load_tokenizer(source.tokenizer_dir(), ctx.model)
    turns = cfg.assistant_turns.value
    vision = is_vision(ctx.model, source.model_under())
    if vision and records is None:  # image chats: the processor renders and tokenizes them, batch by batch
        tokenizer = load_processor(source.tokenizer_dir(), ctx.model)
        records = load(cfg.dataset, "sft")
    if vision:
        dataset = image_dataset(sft_rows(records))
    elif records is not None:  # teacher-written chats: as many as the teacher answered, already in memory
        dataset = Dataset.from_list([truncated(r, cfg.max_length) for r in tokenize_chats(tokenizer, records, turns)])
    else:  # Arrow end to end, tokenized once per data and tokenizer version (datasets' cache)
        dataset = prepared(cfg.dataset, "sft", partial(tokenize_record, tokenizer=tokenizer, turns=turns,
                                                       max_length=cfg.max_length), ctx.hardware, desc="tokenizing chats")
    dataset, sources = mixture.split_sources(dataset)  # a mixture: each row's entry, to count what training draws
    speed = speed_args(cfg, ctx.device, source) if not vision else {**speed_args(cfg, ctx.device, source),
                                                                     "packing": False, "padding_free": False}
    batching = "packed" if speed["packing"] else "padding-free" if speed["padding_free"] else "padded"
    args = TrlSFTConfig(
        output_dir=str(ctx.out_dir / "trainer"), max_steps=cfg.max_steps, num_train_epochs=cfg.num_train_epochs,
        learning_rate=cfg.learning_rate, per_device_train_batch_size=cfg.per_device_train_batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        max_length=None if speed["padding_free"] else cfg.max_length,  # trl's rule: padding-free rows come truncated
        warmup_steps=cfg.warmup_steps, lr_scheduler_type=cfg.lr_scheduler_type, weight_decay=cfg.weight_decay,
        max_grad_norm=cfg.max_grad_norm, logging_steps=cfg.logging_steps, logging_first_step=True,
        seed=ctx.seed, **speed, **checkpoints.trainer_args(cfg.checkpoint),
        **device_args(ctx.device, ctx.hardware, cfg.gradient_checkpointing, source, ctx.model.params_b), **_optimizer_args(cfg),
    )
    model = load_model()
    peft_config = None
    if cfg.method == Method.lora:
        peft_config = lora_config(cfg.lora, ctx.model.lora_target_modules,
                                  vision_model=model if vision else None, vision=cfg.vision, model=model, log=ctx.log)
    elif vision:
        freeze_image_side(model, cfg.vision)
    share = rank_share(model)
    if share:
        ctx.log(f"ZeRO-3: weights created partitioned (zero.Init); this rank holds {share['rank_param_share']:.0%}")
    health = HealthMonitor(cfg.max_steps, cfg.max_grad_norm, cfg.lr_scheduler_type, cfg.warmup_steps, ctx.log)
    trainer = (trainer_cls or SFTTrainer)(
        model=model, args=args, train_dataset=dataset, processing_class=tokenizer, peft_config=peft_config,
        callbacks=[ctx.tracker.trainer_callback(ctx.name), health.callback(), checkpoints.callback(cfg.checkpoint)],
        **(trainer_kwargs or {}))
    draws = mixture.count_draws(trainer, sources, cfg.dataset) if not speed["packing"] else None  # packed rows mix entries
    started = time.time()
    result = trainer.train(resume_from_checkpoint=checkpoints.resume_point(ctx.out_dir, cfg.max_steps, ctx.log))
    trainer.save_model(str(ctx.out_dir))  # rank 0 only when distributed (gathered under DeepSpeed / FSDP)
    if trainer.is_world_process_zero():
        save_tokenizer(tokenizer, source, ctx.out_dir)
        _remove_trainer_dir(ctx.out_dir / "trainer")
    metrics = {"train_loss": float(result.training_loss), "train_steps": int(result.global_step),
               "train_runtime": round(time.time() - started, 2), "train_records": len(dataset) if hasattr(dataset, "__len__") else "streamed",
               "batching": batching,
               **loss_curve(trainer.state.log_history, ("loss", *logged)),
               "health_warnings": health.warnings, **share, **(draws.metrics() if draws else {})}
    ctx.log(f"loss {metrics.get('loss_first', float('nan')):.3f} -> {metrics.get('loss_last', float('nan')):.3f} "
            f"in {metrics['train_steps']} steps ({batching} batches)")
    if cfg.method == Method.full:
        return Artifact(kind="model", path=str(ctx.out_dir), fingerprint="", format="hf",
                        base_model=source.base_model, metrics=metrics, meta=meta or {})
    return Artifact(kind="adapter", path=str(ctx.out_dir), fingerprint="", format="peft-lora",
                    base_model=source.path, metrics=metrics,
                    meta={"lora": {"r": cfg.lora.r, "alpha": cfg.lora.alpha}, **(meta or {})})


def _optimizer_args(cfg) -> dict:
    """Only set when a config asks (the qlora stage picks a paged optimizer on GPUs)."""
    optim = getattr(cfg, "optim", None)
    return {"optim": optim} if optim else {}


def _remove_trainer_dir(path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)
