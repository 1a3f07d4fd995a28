"""On-policy distillation, GKD (Agarwal et al. 2024), with trl's GKDTrainer (trl.experimental): with
probability `lmbda` a batch's answers are sampled from the student itself, and the student is pulled
toward the teacher's token distributions on them by the generalised Jensen-Shannon divergence (`beta` 0:
KL(teacher||student), 1: KL(student||teacher)); otherwise on the data's own answers. The student learns
where its own mistakes take it, which plain logit distillation on fixed answers never shows it.

    python main.py recipe=sft_gkd                     # SFT of the student, then GKD continues its adapter
    python main.py recipe=sft_gkd stages.gkd.lmbda=1.0 stages.gkd.beta=0.0

The teacher and the student are chosen and checked as distill's are (pipeline/stages/train/distill.py:
`teacher: {stage: NAME}` or `{model: PATH}`, one vocabulary, checked at plan time); the rest of the keys are
sft's (method, LoRA, rate, steps, batch, max_length).
"""
from __future__ import annotations

from dataclasses import dataclass

from pipeline.artifact import Artifact, ArtifactKind
from pipeline.data import mixture
from pipeline.data.datasets import prepared
from pipeline.engine.context import Inputs, StageContext
from pipeline.engine.registry import TRAINING_LIBRARIES, stage
from pipeline.errors import ConfigError
from pipeline.models.loading import load_tokenizer
from pipeline.ranges import at_least, between, positive, setting
from pipeline.stages.train.distill import Taught, load_teacher, shared_vocabulary
from pipeline.stages.train.preference import Run, trainable_policy
from pipeline.stages.train.sft import Method, trained_kind
from pipeline.training import checkpoints
from pipeline.training.common import device_args, policy_artifact


@dataclass
class GKDStageConfig(Taught):
    kind: str = setting("gkd", "the stage kind")
    lmbda: float = between(0.5, 0, 1, help="share of batches answered by the student itself (1: fully on-policy, "
                                           "0: the data's answers only)")
    beta: float = between(0.5, 0, 1, help="generalised JSD: 0 KL(teacher||student), 1 KL(student||teacher)")
    temperature: float = positive(0.9, help="sampling temperature of the student's answers")
    divergence_temperature: float = positive(1.0, help="softmax temperature T of both models' distributions in the "
                                                       "divergence, which is scaled by T^2 (distill's temperature; "
                                                       "1: trl's GKD)")
    max_new_tokens: int = at_least(1, 128, help="longest answer the student samples")
    alpha: float = between(0.0, 0, 1, help="weight of cross-entropy on the data's answers in the batches the student "
                                          "does not answer (the rest is the divergence; 0: trl's GKD, as distill's "
                                          "alpha)")
    on_policy_after: int = at_least(0, 0, help="steps on the data's answers before the student answers any batch "
                                              "(an untrained student's own answers teach it nothing)")
    on_policy_after_ratio: float = between(0.0, 0, 1, help="the same as a share of the run's steps, as warmup_ratio "
                                                          "is to warmup_steps: on_policy_after, when above 0, wins")
    alpha_on_student_answers: bool = setting(False, "keep alpha's cross-entropy on the data's answers in batches the "
                                                    "student answered too (one more forward of the student on the "
                                                    "data's chats): the teacher endorses a student's wrong final "
                                                    "answers (README, sft_gkd), the data's stay right")

    def student_kinds(self) -> tuple[str, ...]:
        return (ArtifactKind.model, ArtifactKind.adapter)  # an SFT'd student's adapter keeps training

    def memory_profile(self, sources):
        from dataclasses import replace

        # The student also answers its batches (lmbda): a generation of max_new_tokens per chat, and training on
        # the prompt plus that answer, which max_length does not cut (SmolLM2: planned 4.3 GB, measured 8.8 GB).
        # alpha_on_student_answers holds a forward of the data's chats beside it: counted as a second batch as
        # long (the data's are no longer: the safe side)
        work = super().memory_profile(sources)
        forwards = 2 if self.alpha_on_student_answers else 1
        return replace(work, length=work.length + self.max_new_tokens, batch=work.batch * forwards,
                       generate_batch=self.per_device_train_batch_size, generate_tokens=self.max_new_tokens)

    def validate(self, where: str, earlier: dict) -> None:
        super().validate(where, earlier)
        if self.packing or self.padding_free:
            raise ConfigError(f"{where}.packing / padding_free: GKD samples an answer per chat, so chats stay apart; "
                              "set both to false")
        if self.alpha_on_student_answers and not self.alpha:
            raise ConfigError(f"{where}.alpha_on_student_answers: true with alpha 0 teaches the data's answers with "
                              "weight 0; set alpha in (0, 1] (sft_gkd: 0.5) or the key to false")


def gkd_trainer(trainer_class, cfg: GKDStageConfig, vocab: int):
    """trl's GKDTrainer with six changes, each measured (README, sft_gkd):
    - the divergence is trl's generalised JSD on the answer tokens only, a chunk of rows at a time
      (pipeline/training/distillation.py: jsd_loss); trl's computes it on every position at once, and on SmolLM2
      the stage peaked at 14.8 GB of RSS against 3.8 GB for SFT;
    - each batch's loss is a mean over that batch's own answer tokens. The Trainer counts `num_items_in_batch` from
      the data's labels before GKD swaps in the student's sampled answers, and trl divides the on-policy loss by
      that stale count (3-of-4-layer embedded student after its SFT, 150 steps: 46.0% with trl's count, 57.0%);
    - the divergence may be taken at a temperature T, scaled by T^2 (`divergence_temperature`, as distill's);
    - `alpha` adds cross-entropy on the data's answers to batches the student did not write (distill's hard term;
      on the student's own answers the labels are its samples, so none there);
    - no batch is answered by the student before step `on_policy_after` (or that share of the run's steps);
    - with `alpha_on_student_answers`, batches the student answered keep alpha's cross-entropy on the data's own
      answers to the same chats, kept before trl swaps the student's in."""
    import math
    import random

    from pipeline.backends.perplexity import output_head
    from pipeline.training.distillation import jsd_loss, teacher_answer_logits

    class TunedGKD(trainer_class):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.lmbda_as_set, self.answered_by_student, self.data_answers = self.lmbda, False, None

        def training_step(self, model, inputs, num_items_in_batch=None):
            # One draw a step, as trl's own; the choice is made here so compute_loss knows whose answers these are.
            first = cfg.on_policy_after or math.ceil(cfg.on_policy_after_ratio * self.state.max_steps)
            self.answered_by_student = random.random() <= self.lmbda_as_set and self.state.global_step >= first
            self.lmbda = 1.0 if self.answered_by_student else 0.0
            if self.answered_by_student and cfg.alpha_on_student_answers:  # validate: alpha > 0 then
                # trl replaces these three entries (not the tensors) with the student's answers
                self.data_answers = {k: inputs[k] for k in ("input_ids", "attention_mask", "labels")}
            try:
                return super().training_step(model, inputs, None)  # None: a mean over this batch's own tokens
            finally:
                self.lmbda, self.data_answers = self.lmbda_as_set, None

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            labels = inputs["labels"][:, 1:]
            mask = labels != -100  # answer tokens only (prompt and padding are -100)
            outputs = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
            teacher = self.accelerator.unwrap_model(self.teacher_model).eval()
            teacher_rows = teacher_answer_logits(teacher, output_head(teacher), inputs, mask)
            divergence, ce = jsd_loss(outputs.logits[:, :-1][mask], teacher_rows, labels[mask], self.beta, vocab,
                                      temperature=cfg.divergence_temperature)
            if self.data_answers is not None:  # the student answered; the data's answers are taught beside
                ce = data_cross_entropy(model, self.data_answers, vocab)
            elif self.answered_by_student:  # its labels are its own samples: nothing to teach by cross-entropy
                ce = None
            loss = divergence if ce is None or not cfg.alpha else cfg.alpha * ce + (1 - cfg.alpha) * divergence
            return (loss, outputs) if return_outputs else loss

    return TunedGKD


def data_cross_entropy(model, batch, vocab: int):
    """The model's mean cross-entropy on a batch's answer tokens (labels -100 elsewhere); fp32 copies of the
    answer rows only, as compute_loss takes them."""
    import torch.nn.functional as F

    labels = batch["labels"][:, 1:]
    mask = labels != -100
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    return F.cross_entropy(logits[mask][:, :vocab].float(), labels[mask])


@stage("gkd", config=GKDStageConfig, consumes={"model", "adapter"}, produces=trained_kind,
       libraries=TRAINING_LIBRARIES, distributed=True)
def run(cfg: GKDStageConfig, inputs: Inputs, ctx: StageContext) -> Artifact:
    """Distill the teacher into the input model on the student's own answers; produce the adapter or model."""
    from trl.experimental.gkd import GKDConfig, GKDTrainer

    source = inputs.primary
    tokenizer = load_tokenizer(source.tokenizer_dir(), ctx.model)
    chats = prepared(cfg.dataset, "sft", hardware=ctx.hardware, desc="chats")
    chats = chats.select_columns(["messages", *[c for c in chats.column_names if c == mixture.SOURCE_COLUMN]])
    args = GKDConfig(
        output_dir=str(ctx.out_dir / "trainer"), max_steps=cfg.max_steps, num_train_epochs=cfg.num_train_epochs,
        learning_rate=cfg.learning_rate, per_device_train_batch_size=cfg.per_device_train_batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps, max_length=cfg.max_length,
        warmup_steps=cfg.warmup_steps, lr_scheduler_type=cfg.lr_scheduler_type, weight_decay=cfg.weight_decay,
        max_grad_norm=cfg.max_grad_norm, logging_steps=cfg.logging_steps, logging_first_step=True, seed=ctx.seed,
        lmbda=cfg.lmbda, beta=cfg.beta, temperature=cfg.temperature, max_new_tokens=cfg.max_new_tokens,
        **checkpoints.trainer_args(cfg.checkpoint),
        **device_args(ctx.device, ctx.hardware, cfg.gradient_checkpointing, source, ctx.model.params_b))
    teacher, _, described = load_teacher(cfg, ctx)
    student, peft_config, how = trainable_policy(cfg, source, ctx)
    shared_vocabulary(cfg, student, teacher, inputs, ctx)
    ctx.log(f"GKD: student {source.path} ({how}), lmbda {cfg.lmbda}, beta {cfg.beta}, {len(chats)} chats")
    training = Run(cfg, ctx)
    chats = training.untag(chats, cfg.dataset)
    trainer_class = gkd_trainer(GKDTrainer, cfg, len(tokenizer))
    trainer = trainer_class(model=student, teacher_model=teacher, args=args, train_dataset=chats,
                            processing_class=tokenizer, peft_config=peft_config, callbacks=training.callbacks())
    metrics = training.finish(trainer, source, tokenizer, chats, None)
    ctx.log(f"loss {metrics.get('loss_first', float('nan')):.3f} -> {metrics.get('loss_last', float('nan')):.3f} "
            f"in {metrics['train_steps']} steps")
    meta = {"gkd": {"teacher": described, "lmbda": cfg.lmbda, "beta": cfg.beta, "temperature": cfg.temperature,
                    "divergence_temperature": cfg.divergence_temperature, "alpha": cfg.alpha,
                    "on_policy_after": cfg.on_policy_after, "on_policy_after_ratio": cfg.on_policy_after_ratio,
                    "alpha_on_student_answers": cfg.alpha_on_student_answers}}
    return policy_artifact(source, ctx.out_dir, cfg.method == Method.full, cfg.lora if peft_config else None,
                           metrics, meta)
