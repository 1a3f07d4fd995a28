"""DPO: plan-time refusal of bad data and settings, a few real DPOTrainer steps on tiny random
models (the SFT adapter continues against a frozen copy of itself, so the first loss is ln 2),
and (slow) the sft_dpo recipe's acceptance numbers on the embedded model."""
import json
import math
from pathlib import Path

import pytest
import torch
from conftest import compose, read_chain, run_main
from safetensors.torch import load_file

from pipeline.engine.plan import build_plan
from pipeline.engine.runner import run_chain
from pipeline.engine.store import Store
from pipeline.data.datasets import DataError
from pipeline.errors import ConfigError

LN2 = math.log(2)


def _plan(tmp_path, *overrides):
    cfg = compose(["recipe=sft_dpo", "logger=none", *overrides])
    return build_plan(cfg, Store(tmp_path / "store"), recipe="sft_dpo", device="cpu")


def test_recipe_plans_dpo_on_the_sft_adapter(tmp_path):
    plan = _plan(tmp_path)
    steps = {s.name: s for s in plan.steps}
    assert [s.name for s in plan.steps] == ["sft", "eval_sft", "dpo", "eval_dpo"]
    assert steps["dpo"].input_names == ["sft"] and steps["dpo"].output_kind == "adapter"
    assert steps["dpo"].cfg.reference.value == "input" and steps["dpo"].cfg.beta == 0.3
    assert any("preference_test.jsonl (200 records, preference)" in n for n in steps["dpo"].data_notes)


def test_a_dataset_without_chosen_rejected_fails_at_plan_time(tmp_path):
    with pytest.raises(DataError, match=r"^stages\.dpo\.dataset: embedded/data/sft_train\.jsonl: format 'messages' "
                                          r"cannot feed a preference stage: needs prompt/chosen/rejected$"):
        _plan(tmp_path, "stages.dpo.dataset=${data.sft}")


def test_a_bad_preference_record_is_named_by_key_file_and_line(tmp_path):
    bad = tmp_path / "pairs.jsonl"
    good = {"prompt": "1 + 1?", "chosen": "#### 2", "rejected": "#### 3"}
    bad.write_text(json.dumps(good) + "\n" + json.dumps({"prompt": "2 + 2?", "chosen": "#### 4"}) + "\n")
    with pytest.raises(DataError, match=rf"^stages\.dpo\.eval_dataset: {bad}:2: missing key 'rejected'"):
        _plan(tmp_path, f"data.preference_test.path={bad}")


@pytest.mark.parametrize("override, message", [
    ("stages.dpo.loss_type=simpo", r"^stages\.dpo\.loss_type: 'simpo'; valid: one of sigmoid, hinge, ipo, "),
    ("stages.dpo.beta=0", r"^stages\.dpo\.beta: 0\.0; valid: > 0$"),
    ("stages.dpo.label_smoothing=0.5", r"^stages\.dpo\.label_smoothing: 0\.5; valid: \[0, 0\.5\)$"),
])
def test_bad_dpo_settings_fail_at_plan_time(override, message, tmp_path):
    with pytest.raises(ConfigError, match=message):
        _plan(tmp_path, override)


def _tiny_dpo(model: Path, tmp_path, *extra, run="run"):
    """sft (a few steps at a high rate, so the adapter differs clearly from the base) -> dpo."""
    overrides = [f"model.path={model}", "model.name=tiny", "logger=none", "hardware.num_threads=1",
                 "recipe=sft_dpo", "~stages.eval_sft", "~stages.eval_dpo", "data.sft.limit=32",
                 "stages.sft.max_steps=4", "stages.sft.per_device_train_batch_size=4", "stages.sft.learning_rate=1e-2",
                 "data.preference.limit=24", "data.preference_test.limit=8", "stages.dpo.max_steps=3",
                 "stages.dpo.per_device_train_batch_size=4", "stages.dpo.per_device_eval_batch_size=8",
                 "stages.dpo.logging_steps=1", "stages.dpo.learning_rate=1e-3", *extra,
                 f"paths.store={tmp_path / 'store'}"]
    record = run_chain(compose(overrides), tmp_path / run, "sft_dpo", overrides, None)
    assert record["status"] == "done"
    return {s["name"]: s for s in record["stages"]}


def test_dpo_continues_the_sft_adapter_against_a_frozen_copy(tiny_llama, tmp_path):
    stages = _tiny_dpo(tiny_llama, tmp_path)
    metrics = stages["dpo"]["metrics"]
    # Policy == reference at step 0: loss ln 2, no pair preferred yet.
    assert metrics["loss_first"] == pytest.approx(LN2, abs=1e-4)
    assert metrics["reward_accuracy_first"] == 0.0 and metrics["reward_margin_first"] == pytest.approx(0, abs=1e-5)
    assert metrics["train_steps"] == 3 and metrics["eval_records"] == 8
    assert {"eval_reward_margin", "eval_reward_accuracy", "eval_loss"} <= set(metrics)
    assert 0 <= metrics["eval_reward_accuracy"] <= 1
    folder = Path(stages["dpo"]["artifact"])
    manifest = json.loads((folder / "artifact.json").read_text())
    assert manifest["kind"] == "adapter" and manifest["base_model"] == str(tiny_llama)
    assert manifest["meta"]["reference"] == "input" and manifest["meta"]["trained"].startswith("continuing")
    assert not (folder / "ref").exists()  # trl's frozen reference copy is not saved
    before = load_file(Path(stages["sft"]["artifact"]) / "adapter_model.safetensors")
    after = load_file(folder / "adapter_model.safetensors")
    assert before.keys() == after.keys()
    assert any(not torch.equal(before[k], after[k]) for k in before)  # the SFT adapter itself was trained
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert any("rewards/margins" in r for r in rows if r["stage"] == "dpo")  # what W&B gets


def test_base_reference_scores_the_sft_gains_as_rewards(tiny_llama, tmp_path):
    """reference: base reproduces the rivals' setup: the step-0 margin is already not 0."""
    stages = _tiny_dpo(tiny_llama, tmp_path, "stages.dpo.reference=base", "stages.dpo.max_steps=1")
    metrics = stages["dpo"]["metrics"]
    assert abs(metrics["reward_margin_first"]) > 1e-4 and metrics["loss_first"] != pytest.approx(LN2, abs=1e-4)


def test_dpo_on_a_model_trains_a_new_lora_or_the_full_model(tiny_qwen3, tmp_path):
    lora = _tiny_dpo(tiny_qwen3, tmp_path, "~stages.sft", "stages.dpo.inputs=[base]")["dpo"]
    manifest = json.loads((Path(lora["artifact"]) / "artifact.json").read_text())
    assert manifest["kind"] == "adapter" and manifest["meta"]["trained"].startswith("new LoRA")
    assert lora["metrics"]["loss_first"] == pytest.approx(LN2, abs=1e-4)
    full = _tiny_dpo(tiny_qwen3, tmp_path, "~stages.sft", "stages.dpo.inputs=[base]", "stages.dpo.method=full",
                     run="run_full")["dpo"]
    assert (Path(full["artifact"]) / "model.safetensors").is_file()
    assert full["metrics"]["loss_first"] == pytest.approx(LN2, abs=1e-4)


@pytest.mark.acceptance
def test_sft_dpo_recipe_acceptance_on_the_embedded_model(tmp_path):
    """Acceptance: DPO starts at ln 2, ends with a positive reward margin on held-out pairs, does not
    lower held-out arithmetic accuracy, and the whole recipe takes <= 15 minutes on 2 CPU cores."""
    import time

    started = time.time()
    result = run_main(["recipe=sft_dpo", "logger=none", "hardware.num_threads=1"], tmp_path, timeout=1200)
    seconds = time.time() - started
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    stages = {s["name"]: s for s in read_chain(tmp_path / "run")["stages"]}
    dpo = stages["dpo"]["metrics"]
    assert dpo["loss_first"] == pytest.approx(LN2, abs=0.01), dpo
    assert dpo["reward_accuracy_first"] < 1.0 and dpo["eval_reward_margin"] > 0, dpo
    before, after = stages["eval_sft"]["metrics"]["math_accuracy"], stages["eval_dpo"]["metrics"]["math_accuracy"]
    assert after >= before, (before, after)
    assert seconds <= 15 * 60, seconds
