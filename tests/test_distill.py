"""The distill stage: the loss formula on hand-made logits, logit and sequence distillation on tiny
random models, the plan-time checks of the teacher, and (slow) the distill recipe's acceptance."""
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import EMBEDDED, compose, read_chain, run_main

from pipeline.engine.plan import build_plan
from pipeline.engine.runner import run_chain
from pipeline.engine.store import Store
from pipeline.errors import ConfigError
from pipeline.training.distillation import distillation_loss

EVALS = ["~stages.eval_teacher", "~stages.eval_sft_student", "~stages.eval_distill"]


def _tiny_distill(model: Path, extra: list[str] = ()) -> list[str]:
    """recipe=distill shrunk to seconds: tiny model, a few steps each, no eval stages."""
    return ["recipe=distill", f"model.path={model}", "model.name=tiny", "logger=none", "hardware.num_threads=1",
            "data.sft.limit=32", "stages.teacher.max_steps=4", "stages.teacher.per_device_train_batch_size=4",
            "stages.sft_student.max_steps=3", "stages.sft_student.per_device_train_batch_size=4",
            "stages.sft_student.logging_steps=1", "stages.distill.logging_steps=1", *EVALS, *extra]


def _run(overrides: list[str], tmp_path: Path, run: str = "run") -> dict:
    cfg = compose(overrides + [f"paths.store={tmp_path / 'store'}"])
    record = run_chain(cfg, tmp_path / run, "distill", overrides, None)
    return {s["name"]: s for s in record["stages"]}


def _plan(overrides: list[str], tmp_path: Path):
    return build_plan(compose(overrides), Store(tmp_path / "store"), recipe="distill", device="cpu")


# --- the loss on hand-made logits ------------------------------------------------------------

STUDENT = torch.tensor([[2.0, 0.5, -1.0], [0.0, 1.0, 0.3]])
TEACHER = torch.tensor([[1.0, 1.5, -0.5], [-1.0, 2.0, 0.0]])
LABELS = torch.tensor([0, 1])


def _kl_by_hand(t: float) -> float:
    """Mean over tokens of sum_v p_teacher * (log p_teacher - log p_student), at temperature t."""
    total = 0.0
    for s_row, t_row in zip(STUDENT.tolist(), TEACHER.tolist()):
        zs = sum(math.exp(x / t) for x in s_row)
        zt = sum(math.exp(x / t) for x in t_row)
        for s, te in zip(s_row, t_row):
            p_t, p_s = math.exp(te / t) / zt, math.exp(s / t) / zs
            total += p_t * (math.log(p_t) - math.log(p_s))
    return total / len(STUDENT)


def test_alpha_one_is_plain_cross_entropy():
    loss, ce, _ = distillation_loss(STUDENT, TEACHER, LABELS, temperature=2.0, alpha=1.0)
    assert loss.item() == pytest.approx(F.cross_entropy(STUDENT, LABELS).item(), rel=1e-6)
    assert ce.item() == pytest.approx(loss.item(), rel=1e-6)


@pytest.mark.parametrize("temperature", [1.0, 2.0, 4.0])
def test_kl_term_is_scaled_by_t_squared(temperature):
    loss, _, kl = distillation_loss(STUDENT, TEACHER, LABELS, temperature=temperature, alpha=0.0)
    assert kl.item() == pytest.approx(_kl_by_hand(temperature), rel=1e-5)
    assert loss.item() == pytest.approx(temperature ** 2 * _kl_by_hand(temperature), rel=1e-5)


def test_mixed_loss_and_token_normalisation():
    ce = F.cross_entropy(STUDENT, LABELS).item()
    loss, _, _ = distillation_loss(STUDENT, TEACHER, LABELS, temperature=2.0, alpha=0.3)
    assert loss.item() == pytest.approx(0.3 * ce + 0.7 * 4 * _kl_by_hand(2.0), rel=1e-5)
    # gradient accumulation: sums divided by the tokens of all micro-batches (here twice these two)
    quarter, _, _ = distillation_loss(STUDENT, TEACHER, LABELS, temperature=2.0, alpha=0.3, num_tokens=4)
    assert quarter.item() == pytest.approx(loss.item() / 2, rel=1e-6)
    same, _, kl = distillation_loss(STUDENT, STUDENT, LABELS, temperature=2.0, alpha=0.3)
    assert kl.item() == pytest.approx(0.0, abs=1e-6) and same.item() == pytest.approx(0.3 * ce, rel=1e-5)


# --- training on tiny models -----------------------------------------------------------------

def test_chunked_loss_and_gradient_equal_one_pass():
    """The KL in chunks of 3 rows (activation-checkpointed) gives the loss and gradient of one pass, and
    logit columns past the tokenizer's vocabulary (embedding padding) are left out."""
    torch.manual_seed(0)
    student = torch.randn(10, 7, requires_grad=True)
    teacher, labels = torch.randn(10, 7), torch.randint(0, 5, (10,))
    whole, _, _ = distillation_loss(student[:, :5], teacher[:, :5], labels, 2.0, 0.3, chunk_rows=10)
    (want,) = torch.autograd.grad(whole, student)
    chunked, _, _ = distillation_loss(student, teacher, labels, 2.0, 0.3, vocab=5, chunk_rows=3)
    (got,) = torch.autograd.grad(chunked, student)
    assert chunked.item() == pytest.approx(whole.item(), rel=1e-6)
    assert torch.allclose(got, want, atol=1e-7) and got[:, 5:].abs().sum() == 0


def test_a_stage_teacher_of_another_vocabulary_is_refused(tiny_llama, tmp_path):
    """Checked for every teacher kind when the stage runs (a stage's teacher is only known by then)."""
    from types import SimpleNamespace

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pipeline.artifact import Artifact
    from pipeline.models.config import ModelConfig
    from pipeline.stages.train.distill import DistillConfig, TeacherSpec, shared_vocabulary

    other = tmp_path / "other"
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    tokenizer.add_tokens(["<extra_token>"])
    tokenizer.save_pretrained(other)
    student = AutoModelForCausalLM.from_pretrained(tiny_llama)
    ctx = SimpleNamespace(name="distill", model=ModelConfig(name="tiny", path=str(tiny_llama)),
                          chain={"teacher": Artifact(kind="model", path=str(other), fingerprint="t")})
    cfg = DistillConfig(teacher=TeacherSpec(stage="teacher"))
    inputs = SimpleNamespace(primary=Artifact(kind="model", path=str(tiny_llama), fingerprint="s"))
    with pytest.raises(ConfigError, match=r"stages.distill.teacher: the teacher's tokenizer \(\d+ tokens"):
        shared_vocabulary(cfg, student, student, inputs, ctx)
    ctx.chain["teacher"] = Artifact(kind="model", path=str(tiny_llama), fingerprint="t")
    assert shared_vocabulary(cfg, student, student, inputs, ctx) == len(AutoTokenizer.from_pretrained(tiny_llama))


def test_logit_distillation_trains_and_alpha_one_matches_sft(tiny_llama, tmp_path):
    stages = _run(_tiny_distill(tiny_llama), tmp_path)
    distill = stages["distill"]
    assert distill["status"] == "done" and distill["inputs"] == ["student", "teacher"]
    metrics = distill["metrics"]
    assert metrics["train_steps"] == 3 and metrics["distill_kl_first"] > 0 and metrics["distill_ce_first"] > 0
    manifest = json.loads((Path(distill["artifact"]) / "artifact.json").read_text())
    assert manifest["kind"] == "adapter" and manifest["meta"]["distill"]["teacher"]["stage"] == "teacher"
    assert manifest["meta"]["distill"]["teacher"]["fingerprint"] == stages["teacher"]["fingerprint"]
    assert (Path(distill["artifact"]) / "adapter_config.json").is_file()

    # alpha 1 is SFT: same student, batch, LoRA init and data order, so the first loss is SFT's
    again = _run(_tiny_distill(tiny_llama, ["stages.distill.alpha=1.0"]), tmp_path, "run2")
    assert [again[n]["status"] for n in ("teacher", "sft_student", "distill")] == ["reused", "reused", "done"]
    assert again["distill"]["metrics"]["loss_first"] == pytest.approx(again["sft_student"]["metrics"]["loss_first"],
                                                                      rel=1e-3)


def test_sequence_distillation_trains_on_teacher_answers(tiny_qwen3, tmp_path):
    # a random tiny teacher answers only whitespace: the embedded model teaches, named by its folder
    extra = ["stages.distill.mode=sequence", "stages.distill.max_new_tokens=8", "stages.distill.method=full",
             "stages.distill.teacher.stage=null", f"stages.distill.teacher.model={EMBEDDED}", "data.sft.limit=12"]
    stages = _run(_tiny_distill(tiny_qwen3, extra), tmp_path)
    distill = stages["distill"]
    assert distill["status"] == "done" and distill["metrics"]["train_steps"] == 3
    folder = Path(distill["artifact"])
    answers = [json.loads(line) for line in (folder / "teacher_answers.jsonl").read_text().splitlines()]
    assert answers and all(a["messages"][-1]["role"] == "assistant" for a in answers)
    meta = json.loads((folder / "artifact.json").read_text())
    assert meta["kind"] == "model" and meta["meta"]["distill"]["teacher_answers"] == len(answers)
    assert meta["meta"]["distill"]["teacher"]["model"] == str(EMBEDDED) and distill["inputs"] == ["student"]
    assert (folder / "model.safetensors").is_file()


# --- plan-time checks ------------------------------------------------------------------------

def _foreign_model(folder: Path) -> Path:
    """A model folder whose tokenizer is another vocabulary (a 6-word word-level one)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["<unk>", "<pad>", "<|im_end|>", "the", "cat", "sat"])}
    raw = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="<unk>", pad_token="<pad>",
                            eos_token="<|im_end|>").save_pretrained(folder)
    LlamaConfig(vocab_size=len(vocab), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                num_attention_heads=2).save_pretrained(folder)
    return folder


def test_teacher_with_another_tokenizer_fails_at_plan_time(tmp_path):
    teacher = _foreign_model(tmp_path / "foreign")
    logit = ["recipe=distill", "logger=none", "stages.distill.teacher.stage=null",
             f"stages.distill.teacher.model={teacher}"]
    with pytest.raises(ConfigError, match=r"^stages\.distill\.teacher: the teacher's tokenizer \(6 tokens\) differs "
                                          r"from the student's \(3072 tokens.*mode: sequence$"):
        _plan(logit, tmp_path)
    plan = _plan(logit + ["stages.distill.mode=sequence"], tmp_path)  # answers are text: any tokenizer
    assert plan.steps[5].input_names == ["student"]


def test_teacher_model_of_the_same_tokenizer_plans(tiny_llama, tmp_path):
    plan = _plan(["recipe=distill", "logger=none", "stages.distill.teacher.stage=null",
                  f"stages.distill.teacher.model={tiny_llama}"], tmp_path)
    assert [s.name for s in plan.steps if s.kind == "distill"] == ["distill"]


@pytest.mark.parametrize("teacher, message", [
    ("nope", r"^stages\.distill\.teacher\.stage: 'nope' is not an earlier stage that produces a model or adapter; "
             r"choose from: teacher, student, sft_student"),
    ("eval_teacher", r"^stages\.distill\.teacher\.stage: 'eval_teacher' is not an earlier stage"),
    ("eval_distill", r"^stages\.distill\.teacher\.stage: 'eval_distill' is not an earlier stage"),
])
def test_unknown_teacher_stage_fails_naming_the_key(teacher, message, tmp_path):
    with pytest.raises(ConfigError, match=message):
        _plan(["recipe=distill", "logger=none", f"stages.distill.teacher.stage={teacher}"], tmp_path)


@pytest.mark.parametrize("override, message", [
    ("stages.distill.teacher.model=./embedded/model", r"^stages\.distill\.teacher: set exactly one of stage"),
    ("stages.distill.teacher={stage: null, model: /nope/teacher}",
     r"^stages\.distill\.teacher\.model: '/nope/teacher' is no folder, and not a hub id"),
    ("stages.distill.alpha=1.5", r"^stages\.distill\.alpha: 1\.5; valid: \[0, 1\]$"),
    ("stages.distill.temperature=0", r"^stages\.distill\.temperature: 0\.0; valid: > 0$"),
    ("stages.distill.inputs=[teacher]", r"^stages\.distill\.inputs: name one student model"),
    ("stages.distill.inputs=[sft_student]", r"^stages\.distill\.inputs: name one student model .*choose from: base, student$"),
])
def test_bad_distill_config_fails_at_plan_time(override, message, tmp_path):
    with pytest.raises(ConfigError, match=message):
        _plan(["recipe=distill", "logger=none", override], tmp_path)


def test_teacher_fingerprint_is_part_of_the_students(tmp_path):
    first = {s.name: s.fingerprint for s in _plan(["recipe=distill", "logger=none"], tmp_path).steps}
    retaught = {s.name: s.fingerprint for s in
                _plan(["recipe=distill", "logger=none", "stages.teacher.max_steps=301"], tmp_path).steps}
    assert first["sft_student"] == retaught["sft_student"]
    assert first["distill"] != retaught["distill"]


# --- acceptance ------------------------------------------------------------------------------

@pytest.mark.acceptance
def test_distill_recipe_beats_sft_alone_on_the_embedded_model(tmp_path):
    """The whole recipe on 2 CPU cores (teacher trained too, private store): about 8-10 minutes."""
    result = run_main(["recipe=distill", "logger=none", "hardware.num_threads=1"], tmp_path, timeout=1800)
    assert result.returncode == 0, result.stderr[-3000:]
    stages = {s["name"]: s for s in read_chain(tmp_path / "run")["stages"]}
    distilled = stages["eval_distill"]["metrics"]["math_accuracy"]
    sft_only = stages["eval_sft_student"]["metrics"]["math_accuracy"]
    assert distilled > sft_only, (distilled, sft_only)


def test_the_teacher_sees_padding_free_rows_as_the_student_does(tiny_llama, tmp_path):
    """The base distilled from itself: at the first step the student (a LoRA that starts as the identity) and the
    teacher give the same logits, so the KL term is 0, in padding-free batches too (position ids to both)."""
    stages = _run(_tiny_distill(tiny_llama, [
        "~stages.teacher", "~stages.student", "stages.sft_student.inputs=[base]", "stages.distill.inputs=[base]",
        "stages.distill.teacher.stage=null", f"stages.distill.teacher.model={tiny_llama}",
        "stages.distill.padding_free=true"]), tmp_path)
    metrics = stages["distill"]["metrics"]
    assert metrics["batching"] == "padding-free"
    assert metrics["distill_kl_first"] == pytest.approx(0, abs=1e-6) and metrics["distill_ce_first"] > 0
