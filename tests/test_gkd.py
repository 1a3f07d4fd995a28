"""The gkd stage (trl's GKDTrainer): a few on-policy steps on a tiny random model, and the teacher checks
it shares with distill, at plan time."""
import json
from pathlib import Path

import pytest
from conftest import compose
from test_distill import _foreign_model

from pipeline.engine.plan import build_plan
from pipeline.engine.runner import run_chain
from pipeline.engine.store import Store
from pipeline.errors import ConfigError

EVALS = ["~stages.eval_teacher", "~stages.eval_sft_student", "~stages.eval_gkd"]


def _plan(tmp_path, *overrides):
    return build_plan(compose(["recipe=sft_gkd", "logger=none", *overrides]), Store(tmp_path / "store"),
                      recipe="sft_gkd", device="cpu")


def test_the_student_comes_first_and_the_teacher_is_an_input(tmp_path):
    steps = {s.name: s for s in _plan(tmp_path).steps}
    assert steps["gkd"].input_names == ["student", "teacher"]  # GKD and the baseline SFT start from one student
    assert steps["sft_student"].input_names == ["student"]
    assert steps["gkd"].cfg.max_steps == steps["sft_student"].cfg.max_steps  # step for step


@pytest.mark.parametrize("override, message", [
    ("stages.gkd.lmbda=1.5", r"^stages\.gkd\.lmbda: 1\.5; valid: \[0, 1\]$"),
    ("stages.gkd.teacher.stage=eval_teacher", r"^stages\.gkd\.teacher\.stage: 'eval_teacher' is not an earlier stage "
                                              r"that produces a model or adapter"),
    ("stages.gkd.divergence_temperature=0", r"^stages\.gkd\.divergence_temperature: 0(\.0)?; valid: > 0"),
    ("stages.gkd.packing=true", r"^stages\.gkd\.packing / padding_free: GKD samples an answer per chat"),
    ("stages.gkd.on_policy_after_ratio=1.5", r"^stages\.gkd\.on_policy_after_ratio: 1\.5; valid: \[0, 1\]$"),
    ("stages.gkd.alpha_on_student_answers=true stages.gkd.alpha=0",
     r"^stages\.gkd\.alpha_on_student_answers: true with alpha 0 teaches the data's answers with weight 0"),
])
def test_bad_gkd_settings_fail_at_plan_time(override, message, tmp_path):
    with pytest.raises(ConfigError, match=message):
        _plan(tmp_path, *override.split())


def test_a_teacher_of_another_vocabulary_is_refused(tmp_path):
    teacher = _foreign_model(tmp_path / "foreign")
    with pytest.raises(ConfigError, match=r"^stages\.gkd\.teacher: the teacher's tokenizer \(6 tokens\) differs from "
                                          r"the student's .*: use a teacher of the student's tokenizer$"):
        _plan(tmp_path, "stages.gkd.teacher.stage=null", f"stages.gkd.teacher.model={teacher}")


def test_gkd_trains_the_student_on_its_own_answers(tiny_llama, tmp_path):
    overrides = ["recipe=sft_gkd", f"model.path={tiny_llama}", "model.name=tiny", "logger=none",
                 "hardware.num_threads=1", "data.sft.limit=16", "stages.teacher.max_steps=3",
                 "stages.teacher.per_device_train_batch_size=4", "stages.sft_student.max_steps=3",
                 "stages.sft_student.per_device_train_batch_size=4", "stages.gkd.logging_steps=1",
                 "stages.gkd.lmbda=1.0", "stages.gkd.max_new_tokens=6", "stages.gkd.inputs=[student]",
                 "stages.sft_student.method=lora",  # GKD trains as the baseline does: a new LoRA
                 *EVALS, f"paths.store={tmp_path / 'store'}"]
    record = run_chain(compose(overrides), tmp_path / "run", "sft_gkd", overrides, None)
    assert record["status"] == "done"
    stages = {s["name"]: s for s in record["stages"]}
    metrics = stages["gkd"]["metrics"]
    assert metrics["train_steps"] == 3 and metrics["loss_first"] > 0
    manifest = json.loads((Path(stages["gkd"]["artifact"]) / "artifact.json").read_text())
    assert manifest["kind"] == "adapter" and manifest["meta"]["gkd"]["teacher"]["stage"] == "teacher"
    assert manifest["meta"]["gkd"]["lmbda"] == 1.0


def test_an_sft_students_adapter_may_be_the_student_but_not_an_eval(tmp_path):
    steps = {s.name: s for s in _plan(tmp_path, "stages.gkd.inputs=[sft_student]").steps}
    assert steps["gkd"].input_names == ["sft_student", "teacher"]
    with pytest.raises(ConfigError, match=r"^stages\.gkd\.inputs: name one student model .*got \['eval_teacher'\]; "
                                          r"choose from: base, student, sft_student$"):
        _plan(tmp_path, "stages.gkd.inputs=[eval_teacher]")


def test_gkd_keeps_training_an_sft_students_adapter(tiny_llama, tmp_path):
    from safetensors.torch import load_file

    overrides = ["recipe=sft_gkd", f"model.path={tiny_llama}", "model.name=tiny", "logger=none",
                 "hardware.num_threads=1", "data.sft.limit=16", "stages.teacher.max_steps=2",
                 "stages.teacher.per_device_train_batch_size=4", "stages.sft_student.max_steps=2",
                 "stages.sft_student.per_device_train_batch_size=4", "stages.sft_student.method=lora",
                 "stages.gkd.inputs=[sft_student]",
                 "stages.gkd.lmbda=1.0", "stages.gkd.on_policy_after=1", "stages.gkd.alpha=0.5",
                 "stages.gkd.max_new_tokens=8",
                 *EVALS, f"paths.store={tmp_path / 'store'}"]
    record = run_chain(compose(overrides), tmp_path / "run", "sft_gkd", overrides, None)
    stages = {s["name"]: s for s in record["stages"]}
    before = load_file(Path(stages["sft_student"]["artifact"]) / "adapter_model.safetensors")
    after = load_file(Path(stages["gkd"]["artifact"]) / "adapter_model.safetensors")
    assert after.keys() == before.keys()  # the same adapter, not one stacked on it
    assert any(not after[k].equal(before[k]) for k in before)
    manifest = json.loads((Path(stages["gkd"]["artifact"]) / "artifact.json").read_text())
    assert manifest["base_model"] == json.loads((Path(stages["sft_student"]["artifact"]) / "artifact.json")
                                                .read_text())["base_model"]


def _wrapped(parent, alpha=0.0, on_policy_after=0, lmbda=0.5, step=0, ratio=0.0, max_steps=10, on_student=False):
    """The stage's trainer class over `parent`, built without a model: the overrides alone."""
    from types import SimpleNamespace

    from pipeline.stages.train.gkd import GKDStageConfig, gkd_trainer

    cfg = GKDStageConfig(alpha=alpha, on_policy_after=on_policy_after, on_policy_after_ratio=ratio,
                         alpha_on_student_answers=on_student)
    trainer = object.__new__(gkd_trainer(parent, cfg, vocab=64))
    trainer.lmbda = trainer.lmbda_as_set = lmbda
    trainer.answered_by_student, trainer.data_answers = False, None
    trainer.state = SimpleNamespace(global_step=step, max_steps=max_steps)
    return trainer


def test_each_batch_is_averaged_over_its_own_answer_tokens():
    """trl hands training_step the data's label count even when the batch's labels become the student's own
    (longer) answers; the stage's trainer drops it so trl averages over the batch's real tokens."""
    from trl.experimental.gkd import GKDTrainer

    from pipeline.stages.train.gkd import GKDStageConfig, gkd_trainer

    seen = []

    class Recording(GKDTrainer):
        def training_step(self, model, inputs, num_items_in_batch=None):
            seen.append(num_items_in_batch)

    _wrapped(Recording).training_step(None, {}, 17)
    assert seen == [None] and issubclass(gkd_trainer(GKDTrainer, GKDStageConfig(), 64), GKDTrainer)


def test_the_student_answers_no_batch_before_on_policy_after_and_lmbda_is_restored():
    from trl.experimental.gkd import GKDTrainer

    lmbdas = []

    class Recording(GKDTrainer):
        def training_step(self, model, inputs, num_items_in_batch=None):
            lmbdas.append(self.lmbda)  # what trl's own draw compares with

    early = _wrapped(Recording, on_policy_after=5, lmbda=1.0, step=4)
    early.training_step(None, {})
    late = _wrapped(Recording, on_policy_after=5, lmbda=1.0, step=5)
    late.training_step(None, {})
    assert lmbdas == [0.0, 1.0] and (early.answered_by_student, late.answered_by_student) == (False, True)
    assert early.lmbda == late.lmbda == 1.0


@pytest.mark.parametrize("step, max_steps, answers", [(29, 60, False), (30, 60, True), (7, 15, False),
                                                      (8, 15, True)])
def test_on_policy_after_ratio_counts_a_share_of_the_runs_steps(step, max_steps, answers):
    from trl.experimental.gkd import GKDTrainer

    class Recording(GKDTrainer):
        def training_step(self, model, inputs, num_items_in_batch=None):
            pass

    trainer = _wrapped(Recording, lmbda=1.0, ratio=0.5, step=step, max_steps=max_steps)
    trainer.training_step(None, {})
    assert trainer.answered_by_student is answers  # half of 15 steps rounds up: the student answers from step 8


def test_on_policy_after_in_steps_wins_over_the_recipes_ratio(tmp_path):
    """As warmup_steps over warmup_ratio: `stages.gkd.on_policy_after=30` on sft_gkd (ratio 0.5) means step 30."""
    from trl.experimental.gkd import GKDTrainer

    class Recording(GKDTrainer):
        def training_step(self, model, inputs, num_items_in_batch=None):
            pass

    gkd = {s.name: s for s in _plan(tmp_path, "stages.gkd.on_policy_after=3").steps}["gkd"].cfg
    assert (gkd.on_policy_after, gkd.on_policy_after_ratio) == (3, 0.5)
    trainer = _wrapped(Recording, on_policy_after=3, lmbda=1.0, ratio=0.5, step=3, max_steps=60)
    trainer.training_step(None, {})
    assert trainer.answered_by_student  # step 3, not step 30


def test_the_loss_is_trls_divergence_on_answer_tokens_plus_alpha_times_the_datas_cross_entropy():
    """The stage computes trl's generalised JSD a chunk of answer rows at a time; it must equal trl's own
    whole-batch computation, and alpha must add the data's cross-entropy only where the student did not answer."""
    from types import SimpleNamespace

    import torch
    import torch.nn.functional as F
    from transformers import LlamaConfig, LlamaForCausalLM
    from trl.experimental.gkd import GKDTrainer

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2)
    student, teacher = LlamaForCausalLM(config), LlamaForCausalLM(config).eval()
    inputs = {"input_ids": torch.randint(0, 64, (2, 9)), "attention_mask": torch.ones(2, 9, dtype=torch.long)}
    inputs["labels"] = inputs["input_ids"].masked_fill(torch.arange(9) < 4, -100)  # a 4-token prompt
    logits, teacher_logits = student(**inputs).logits, teacher(**inputs).logits.detach()
    trl_jsd = GKDTrainer.generalized_jsd_loss(logits[:, :-1], teacher_logits[:, :-1], inputs["labels"][:, 1:],
                                              beta=0.5)
    ce = F.cross_entropy(logits[:, :-1].reshape(-1, 64), inputs["labels"][:, 1:].reshape(-1), ignore_index=-100)

    trainer = _wrapped(GKDTrainer, alpha=0.25)
    trainer.teacher_model, trainer.beta = teacher, 0.5
    trainer.accelerator = SimpleNamespace(unwrap_model=lambda model: model)
    assert torch.allclose(trainer.compute_loss(student, inputs), 0.25 * ce + 0.75 * trl_jsd, atol=1e-5)
    trainer.answered_by_student = True  # its labels are its own samples: the divergence alone
    assert torch.allclose(trainer.compute_loss(student, inputs), trl_jsd, atol=1e-5)


def test_alpha_on_student_answers_teaches_the_datas_answers_beside_the_divergence_on_the_students():
    """With alpha_on_student_answers, a batch the student answered is pulled toward the teacher on its own answers
    and, weighted by alpha, taught the data's answers to the same chats, kept before trl swaps them out."""
    from types import SimpleNamespace

    import torch
    import torch.nn.functional as F
    from transformers import LlamaConfig, LlamaForCausalLM
    from trl.experimental.gkd import GKDTrainer

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2)
    student, teacher = LlamaForCausalLM(config), LlamaForCausalLM(config).eval()

    def batch(length):
        ids = torch.randint(0, 64, (2, length))
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids),
                "labels": ids.masked_fill(torch.arange(length) < 4, -100)}  # a 4-token prompt

    data, own = batch(9), batch(12)  # the data's answers; the student's own (longer) ones
    own_logits, teacher_logits = student(**own).logits, teacher(**own).logits.detach()
    trl_jsd = GKDTrainer.generalized_jsd_loss(own_logits[:, :-1], teacher_logits[:, :-1], own["labels"][:, 1:],
                                              beta=0.5)
    data_ce = F.cross_entropy(student(**data).logits[:, :-1].reshape(-1, 64), data["labels"][:, 1:].reshape(-1),
                              ignore_index=-100)

    class SwapsInTheStudentsAnswers(GKDTrainer):
        def training_step(self, model, inputs, num_items_in_batch=None):
            inputs.update(own)  # as trl's: the dict's entries are replaced
            return self.compute_loss(model, inputs)

    losses = {}
    for on_student in (False, True):
        trainer = _wrapped(SwapsInTheStudentsAnswers, alpha=0.25, lmbda=1.0, on_student=on_student)
        trainer.teacher_model, trainer.beta = teacher, 0.5
        trainer.accelerator = SimpleNamespace(unwrap_model=lambda model: model)
        losses[on_student] = trainer.training_step(student, dict(data))
        assert trainer.answered_by_student and trainer.data_answers is None  # nothing kept past the step
    assert torch.allclose(losses[False], trl_jsd, atol=1e-5)
    assert torch.allclose(losses[True], 0.25 * data_ce + 0.75 * trl_jsd, atol=1e-5)


def test_the_chunked_divergence_and_its_gradients_equal_trls_whole_computation():
    import torch
    from trl.experimental.gkd import GKDTrainer

    from pipeline.training.distillation import jsd_loss

    torch.manual_seed(0)
    student, teacher, labels = torch.randn(7, 11, requires_grad=True), torch.randn(7, 11), torch.randint(0, 11, (7,))
    jsd, _ = jsd_loss(student, teacher, labels, beta=0.3, chunk_rows=2)
    jsd.backward()
    chunked_grad, student.grad = student.grad.clone(), None
    whole = GKDTrainer.generalized_jsd_loss(student[None], teacher[None], labels[None], beta=0.3)
    whole.backward()
    assert torch.allclose(jsd, whole, atol=1e-6) and torch.allclose(chunked_grad, student.grad, atol=1e-6)


def test_a_divergence_temperature_softens_both_models_and_scales_by_its_square():
    """divergence_temperature T is distill's: trl's JSD at T times T^2; the cross-entropy stays on raw logits."""
    import torch
    import torch.nn.functional as F
    from trl.experimental.gkd import GKDTrainer

    from pipeline.training.distillation import jsd_loss

    torch.manual_seed(0)
    student, teacher, labels = torch.randn(7, 11), torch.randn(7, 11), torch.randint(0, 11, (7,))
    jsd, ce = jsd_loss(student, teacher, labels, beta=0.0, chunk_rows=3, temperature=2.0)
    at_t = GKDTrainer.generalized_jsd_loss(student[None], teacher[None], labels[None], beta=0.0, temperature=2.0)
    plain, _ = jsd_loss(student, teacher, labels, beta=0.0)
    assert torch.allclose(jsd, 4 * at_t, atol=1e-6) and not torch.allclose(jsd, plain, atol=1e-3)
    assert torch.allclose(ce, F.cross_entropy(student, labels), atol=1e-6)


def test_teacher_confidence_reads_every_answer_token_once(tmp_path):
    """scripts/teacher_confidence.py (the README's why-GKD-loses figures): one row per kind of answer token, each
    answer's `####` and end of turn counted once, probabilities and entropies in range."""
    import math
    import subprocess
    import sys

    root = Path(__file__).parents[1]
    data = tmp_path / "math.jsonl"
    answers = ["5 - 1 = 4\n#### 4", "9 * 9 = 81\n81 + 5 = 86\n#### 86"]
    data.write_text("".join(json.dumps({"question": f"q{i}", "answer": a}) + "\n" for i, a in enumerate(answers)))
    printed = subprocess.run([sys.executable, "scripts/teacher_confidence.py", "embedded/model", "--data", str(data)],
                             cwd=root, capture_output=True, text=True, check=True).stdout
    rows = {line.split()[0]: line.split()[1:] for line in printed.splitlines()[2:]}

    def digits(texts):  # the embedded tokenizer splits digits
        return str(sum(ch.isdigit() for text in texts for ch in text))
    assert rows["####"][0] == rows["<|im_end|>"][0] == "2"
    assert rows["digit"][0] == digits(a.split("####")[0] for a in answers)
    assert rows["final"][0] == digits(a.split("####")[1] for a in answers)  # the number after `####`
    for count, probability, top, entropy in rows.values():
        assert 0 <= float(probability) <= 1 and 0 <= float(top.rstrip("%")) <= 100
        assert 0 <= float(entropy) <= math.log(3072) + 1e-6

    # An eval's records: the recorded answers are scored, split into right and wrong ones.
    predictions = tmp_path / "predictions.jsonl"
    predictions.write_text("".join(json.dumps({"question": f"q{i}", "output": a, "correct": i == 0}) + "\n"
                                   for i, a in enumerate(answers)))
    printed = subprocess.run([sys.executable, "scripts/teacher_confidence.py", "embedded/model", "--answers",
                              str(predictions)], cwd=root, capture_output=True, text=True, check=True).stdout
    rows = {" ".join(line.split()[:2]): line.split()[2:] for line in printed.splitlines()[2:]}
    assert rows["right final"][0] == "1" and rows["wrong final"][0] == "2"  # 4; 86
    assert rows["right ####"][0] == rows["wrong ####"][0] == "1"


def test_teacher_confidence_gives_the_same_figures_through_llama_cpp(tmp_path):
    """--gguf scores the same token ids with llama.cpp on a GGUF of the same model: an independent implementation
    of the probabilities, top-1 shares and entropies the README quotes."""
    import subprocess
    import sys

    pytest.importorskip("llama_cpp")
    from conftest import EMBEDDED

    from pipeline.llama_cpp import converter

    root = Path(__file__).parents[1]
    gguf = tmp_path / "embedded-f32.gguf"
    converter.convert(EMBEDDED, gguf, "f32", model_name="embedded")
    data = tmp_path / "math.jsonl"
    data.write_text("".join(json.dumps({"question": f"What is {a} + {b}?", "answer": f"{a} + {b} = {a + b}\n#### "
                                        f"{a + b}"}) + "\n" for a, b in [(3, 4), (12, 30), (250, 17)]))

    def figures(*extra):
        printed = subprocess.run([sys.executable, "scripts/teacher_confidence.py", str(EMBEDDED), "--data", str(data),
                                  *extra], cwd=root, capture_output=True, text=True, check=True).stdout
        return {line.split()[0]: [float(x.rstrip("%")) for x in line.split()[1:]] for line in printed.splitlines()[2:]}

    by_transformers, by_llama_cpp = figures(), figures("--gguf", str(gguf))
    assert by_transformers.keys() == by_llama_cpp.keys() == {"digit", "final", "####", "<|im_end|>", "other"}
    for kind, (count, probability, top, entropy) in by_transformers.items():
        assert by_llama_cpp[kind][:3] == pytest.approx([count, probability, top], abs=0.002)
        assert by_llama_cpp[kind][3] == pytest.approx(entropy, abs=0.02)


def test_the_plan_counts_the_students_own_answers_in_gkds_memory(tmp_path):
    """On-policy rows are the prompt plus up to max_new_tokens the student writes, which max_length does not cut:
    the plan trains on that length (SmolLM2: trl's GKD planned 4.3 GB and peaked at 8.8 GB)."""
    def planned(*overrides):
        return {s.name: s for s in _plan(tmp_path, *overrides).steps}["gkd"].memory_bytes

    short, long = planned("stages.gkd.max_new_tokens=8"), planned("stages.gkd.max_new_tokens=256")
    sft = {s.name: s for s in _plan(tmp_path).steps}["sft_student"].memory_bytes
    assert sft < short < long
    # alpha_on_student_answers holds a forward of the data's chats beside the student's own
    assert planned("stages.gkd.alpha_on_student_answers=true") > planned()
