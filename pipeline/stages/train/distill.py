"""Knowledge distillation from a teacher model into a student (full or LoRA).

    python main.py recipe=distill
    python main.py recipe=distill stages.distill.mode=sequence

`mode: logit` (Hinton et al. 2015) trains the student on the SFT data with, on completion tokens,

    loss = alpha * CE(student, labels) + (1 - alpha) * T^2 * KL(softmax(teacher / T) || softmax(student / T))

(the T^2 keeps the soft term's gradients on the scale of the hard term's). It
needs the teacher and the student to share a tokenizer, which the plan checks. `mode: sequence`
(Kim & Rush 2016) lets the teacher answer the SFT prompts (greedy, batched) and SFT-trains the
student on those answers; any teacher works. Training goes through trl's SFTTrainer as `sft` does
(prompt/completion records, completion-only mask); logit mode only replaces its loss
(pipeline/training/distillation.py).

The teacher is an earlier stage's artifact (`teacher: {stage: sft_teacher}`; an adapter is merged
into its base) or a model folder / hub id (`teacher: {model: /path}`). trl's own distillation
trainers do not fit this formula: `DistillationTrainer` is on-policy generalized JSD, and GKD has
no hard-label term and no T^2.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from enum import Enum
from typing import Optional

from omegaconf import MISSING

from pipeline.artifact import Artifact, ArtifactKind
from pipeline.backends.hf import hf_generate
from pipeline.data.datasets import load
from pipeline.engine.context import Inputs, StageContext
from pipeline.engine.registry import TRAINING_LIBRARIES, stage
from pipeline.errors import ConfigError, ModelUnavailable
from pipeline.hashing import file_digest
from pipeline.models.config import ModelConfig
from pipeline.models.loading import (
    base_artifact,
    check_available,
    load_causal_lm,
    load_tokenizer,
    local_folder,
    looks_like_hub_id,
)
from pipeline.ranges import at_least, between, positive, setting
from pipeline.stages.train.sft import SFTConfig, train, trained_kind
from pipeline.training.distillation import trainer_class

BASE = "base"  # the chain's model as an input name (pipeline.engine.plan.BASE)


class Mode(str, Enum):
    logit = "logit"
    sequence = "sequence"


@dataclass
class TeacherSpec:
    stage: Optional[str] = setting(None, "an earlier stage whose model or adapter teaches")
    model: Optional[str] = setting(None, "or a model folder / hub id")
    dtype: Optional[str] = setting(None, "null: the chain model's dtype")


@dataclass
class Taught(SFTConfig):
    """An SFT-style stage that learns from a teacher (distill, gkd): the teacher's choice, its checks, and the
    inputs it makes (the student, then the teacher stage)."""

    teacher: TeacherSpec = setting(factory=TeacherSpec, help="the model whose outputs the student learns")
    # The chain's model (${model.path}): every student derives from it, so its tokenizer is the
    # student's; compared with a teacher model's at plan time where the two compare token by token.
    student_tokenizer: Optional[str] = setting(MISSING,
                                               "the chain's model; compared with teacher.model's tokenizer at plan "
                                               "time")

    # what to do when the teacher's vocabulary differs
    other_vocabulary_hint = "use a teacher of the student's tokenizer"

    @classmethod
    def streamed_datasets(cls) -> set[str]:
        return set()  # the teacher's passes read the whole set

    def same_vocabulary(self) -> bool:
        """Whether student and teacher are compared id by id (so need one vocabulary)."""
        return True

    def student_kinds(self) -> tuple[str, ...]:
        """What the student input may be (distill trains a new LoRA on a full model)."""
        return (ArtifactKind.model,)

    def memory_profile(self, sources):
        from dataclasses import replace

        return replace(super().memory_profile(sources), extra_weights=1.0)  # the teacher, usually the student's size

    def also_reads(self) -> set[str]:
        return {self.teacher.stage} if self.teacher.stage else set()

    def validate(self, where: str, earlier: dict) -> None:
        teacher = self.teacher
        if (teacher.stage is None) == (teacher.model is None):
            raise ConfigError(f"{where}.teacher: set exactly one of stage (an earlier stage's model or adapter) "
                              f"or model (a model folder or hub id), e.g. teacher: {{stage: sft_teacher}}")
        if teacher.dtype not in (None, "auto", "float32", "bfloat16", "float16"):
            raise ConfigError(f"{where}.teacher.dtype: '{teacher.dtype}'; valid: auto, float32, bfloat16, float16")
        if teacher.stage is not None:
            models = [n for n, s in earlier.items() if s.output_kind in (ArtifactKind.model, ArtifactKind.adapter)]
            if teacher.stage not in models:
                raise ConfigError(f"{where}.teacher.stage: '{teacher.stage}' is not an earlier stage that produces a "
                                  f"model or adapter; choose from: {', '.join(models) or '(none)'}, "
                                  f"or set teacher.model to a model folder")
        else:
            _check_teacher_model(f"{where}.teacher", teacher.model)
            if self.same_vocabulary() and self.student_tokenizer:
                check_same_tokenizer(f"{where}.teacher", self.student_tokenizer, teacher.model, self.other_vocabulary_hint)
        self.inputs = self._student_and_teacher(where, earlier)

    def _student_and_teacher(self, where: str, earlier: dict) -> list[str]:
        """The student (one earlier stage of student_kinds(), or the base), then the teacher stage: as an input,
        the teacher's fingerprint is part of this stage's, so a retrained teacher retrains the student."""
        teacher = self.teacher.stage
        named = list(self.inputs or [])
        if teacher and len(named) > 1 and named[-1] == teacher:  # already normalised (validated twice)
            named = named[:-1]
        if not named:  # the latest earlier full model that is not the teacher, else the base
            named = [next((n for n in reversed(list(earlier)) if earlier[n].output_kind == ArtifactKind.model and n != teacher),
                          BASE)]
        student, kinds = named[0], self.student_kinds()
        if len(named) > 1 or (student != BASE and (student not in earlier or earlier[student].output_kind not in kinds)):
            models = [BASE] + [n for n, s in earlier.items() if s.output_kind in kinds and n != teacher]
            raise ConfigError(f"{where}.inputs: name one student model (the teacher goes in teacher.stage); "
                              f"got {self.inputs}; choose from: {', '.join(models)}")
        return [student] + ([teacher] if teacher else [])


@dataclass
class DistillConfig(Taught):
    kind: str = setting("distill", "the stage kind")
    mode: Mode = setting(Mode.logit,
                         "logit: alpha*CE + (1-alpha)*T^2*KL(teacher||student) | sequence: SFT on teacher answers")
    temperature: float = positive(2.0, help="logit mode: T softens both distributions")
    alpha: float = between(0.5, 0, 1, help="logit mode: weight of the hard-label CE (1: plain SFT)")
    max_new_tokens: int = at_least(1, 128, help="sequence mode: longest teacher answer")
    generation_batch_size: int = at_least(1, 64, help="sequence mode: prompts per teacher generate call")
    other_vocabulary_hint = "use a teacher of the student's tokenizer, or mode: sequence"

    def same_vocabulary(self) -> bool:
        return self.mode == Mode.logit

def _check_teacher_model(where: str, path: str) -> None:
    folder = local_folder(path)
    if folder is not None and not (folder / "config.json").is_file():
        raise ConfigError(f"{where}.model: folder {folder} has no config.json (not a Hugging Face model folder)")
    if folder is None and not looks_like_hub_id(path):
        raise ConfigError(f"{where}.model: '{path}' is no folder, and not a hub id of the form owner/name")
    try:
        check_available(ModelConfig(name="teacher", path=path))
    except ModelUnavailable as e:
        raise ConfigError(f"{where}.model: {e}") from None


def _tokenizer_files(path: str) -> dict[str, str]:
    """Hashes of the files that define a local model's vocabulary (empty for a hub id)."""
    folder = local_folder(path)
    if folder is None:
        return {}
    return {name: file_digest(folder / name) for name in ("tokenizer.json", "tokenizer.model")
            if (folder / name).is_file()}


def check_same_tokenizer(where: str, student: str, teacher: str,
                         hint: str = "use a teacher of the student's tokenizer") -> None:
    """Logit distillation compares distributions id by id: both sides need the same vocabulary.
    Equal tokenizer files settle it at once; otherwise both tokenizers are loaded and compared."""
    files = _tokenizer_files(student)
    if files and files == _tokenizer_files(teacher):
        return
    from transformers import AutoTokenizer

    try:
        ours, theirs = (AutoTokenizer.from_pretrained(str(local_folder(p) or p)) for p in (student, teacher))
    except (OSError, ValueError) as e:
        raise ConfigError(f"{where}.model: cannot load the teacher's or student's tokenizer to compare them "
                          f"({str(e).splitlines()[0][:160]})") from None
    vocab, other = ours.get_vocab(), theirs.get_vocab()
    if vocab == other:
        return
    differing = [t for t in sorted(vocab, key=vocab.get)[:300] if other.get(t) != vocab[t]][:3]
    examples = ", ".join(f"{t!r} {vocab[t]} vs {other.get(t)}" for t in differing)
    raise ConfigError(f"{where}: the teacher's tokenizer ({len(other)} tokens) differs from the student's "
                      f"({len(vocab)} tokens{'; ids ' + examples if examples else ''}); comparing token "
                      f"distributions needs the same vocabulary: {hint}")


def shared_vocabulary(cfg: Taught, student, teacher, inputs: Inputs, ctx: StageContext) -> int:
    """The vocabulary size both models score over, after checking that they share it (any teacher kind:
    a stage's or a model's). Logit columns past the tokenizer's size are embedding padding."""
    student_tok = load_tokenizer(inputs.primary.tokenizer_dir(), ctx.model)
    teacher_source = ctx.chain[cfg.teacher.stage] if cfg.teacher.stage else None
    teacher_path = teacher_source.tokenizer_dir() if teacher_source else cfg.teacher.model
    vocab, other = student_tok.get_vocab(), load_tokenizer(teacher_path, ctx.model).get_vocab()
    where = f"stages.{ctx.name}.teacher"
    if vocab != other:
        differing = [t for t in sorted(vocab, key=vocab.get) if other.get(t) != vocab[t]][:3]
        raise ConfigError(f"{where}: the teacher's tokenizer ({len(other)} tokens, {teacher_path}) differs from the "
                          f"student's ({len(vocab)} tokens; e.g. {differing}); the two distributions are compared "
                          f"id by id: {cfg.other_vocabulary_hint}")
    size = len(vocab)
    for name, model in (("student", student), ("teacher", teacher)):
        rows = model.get_output_embeddings().weight.shape[0]
        if rows < size:
            raise ConfigError(f"{where}: the {name}'s output layer has {rows} rows for a {size}-token vocabulary")
    return size


# Consumes adapters too, but only as a teacher: validate() puts the student first in `inputs`.
@stage("distill", config=DistillConfig, consumes={"model", "adapter"}, produces=trained_kind,
       libraries=TRAINING_LIBRARIES, distributed=True)
def run(cfg: DistillConfig, inputs: Inputs, ctx: StageContext) -> Artifact:
    """Distill the teacher into the input model (logits or teacher-written answers)."""
    # sequence mode rewrites each record with the teacher's answer (generation is per record anyway);
    # logit mode trains on the data set as it is, through Arrow like the sft stage (records=None)
    records = load(cfg.dataset, "sft") if cfg.mode == Mode.sequence else None
    teacher, teacher_tokenizer, described = load_teacher(cfg, ctx)
    meta = {"distill": {"mode": cfg.mode.value, "teacher": described, "temperature": cfg.temperature,
                        "alpha": cfg.alpha}}
    if cfg.mode == Mode.sequence:
        started = time.time()
        records, dropped = _teacher_answers(cfg, teacher, teacher_tokenizer, records, ctx)
        meta["distill"].update(teacher_answers=len(records), empty_answers_dropped=dropped,
                               generation_seconds=round(time.time() - started, 2))
        del teacher
        teacher = None
    student = load_causal_lm(inputs.primary, ctx.model, ctx.device)
    return _train(cfg, records, student, teacher, inputs, ctx, meta)


def load_teacher(cfg: Taught, ctx: StageContext):
    """The teacher model (adapters merged into their base), its tokenizer and a description."""
    if cfg.teacher.stage is not None:
        artifact, model_cfg = ctx.chain[cfg.teacher.stage], ctx.model
        described = {"stage": cfg.teacher.stage, "fingerprint": artifact.fingerprint, "path": artifact.path}
    else:
        model_cfg = ModelConfig(name="teacher", path=cfg.teacher.model)
        artifact = base_artifact(model_cfg)
        described = {"model": cfg.teacher.model, "fingerprint": artifact.fingerprint}
    dtype = cfg.teacher.dtype or ctx.model.dtype
    started = time.time()
    model = load_causal_lm(artifact, model_cfg, ctx.device, dtype, merge_adapter=True).eval()
    tokenizer = load_tokenizer(artifact.tokenizer_dir(), model_cfg, padding_side="left")
    ctx.log(f"teacher {described.get('stage') or described['model']} loaded in {time.time() - started:.1f}s")
    return model, tokenizer, described


def _teacher_answers(cfg: DistillConfig, teacher, tokenizer, records: list[dict], ctx: StageContext):
    """Each record's last assistant turn replaced by the teacher's greedy answer to what precedes it."""
    import torch

    prompts = [tokenizer.apply_chat_template(r["messages"][:-1], tokenize=False, add_generation_prompt=True)
               for r in records]
    ctx.log(f"teacher answering {len(prompts)} prompts (greedy, batch {cfg.generation_batch_size})")
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))  # similar lengths batch with less padding
    with torch.inference_mode():
        generated = [g.text for g in hf_generate(teacher, tokenizer, [prompts[i] for i in order],
                                                 cfg.generation_batch_size, cfg.max_new_tokens, ctx.device)]
    answers = [""] * len(prompts)
    for i, answer in zip(order, generated):
        answers[i] = answer
    kept = [{"messages": r["messages"][:-1] + [{"role": "assistant", "content": a.strip()}]}
            for r, a in zip(records, answers) if a.strip()]
    if not kept:
        raise RuntimeError(f"stage {ctx.name}: the teacher answered none of {len(records)} prompts (every answer "
                           "was empty); check the teacher and its chat template, or use mode: logit")
    with open(ctx.out_dir / "teacher_answers.jsonl", "w") as handle:  # kept with the artifact for inspection
        handle.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in kept)
    return kept, len(records) - len(kept)


def _train(cfg: DistillConfig, records: list[dict] | None, model, teacher, inputs: Inputs, ctx: StageContext,
           meta: dict) -> Artifact:
    """The sft stage's training path: plain SFT on teacher-written records (sequence mode), or the
    distillation subclass of SFTTrainer (logit mode)."""
    if teacher is None:
        return train(cfg, inputs, ctx, lambda: model, meta, records=records)
    vocab = shared_vocabulary(cfg, model, teacher, inputs, ctx)
    return train(cfg, inputs, ctx, lambda: model, meta, records=records, trainer_cls=trainer_class(),
                 trainer_kwargs=dict(teacher=teacher, temperature=cfg.temperature, alpha=cfg.alpha, vocab=vocab),
                 logged=("distill_ce", "distill_kl"))
