"""KTO: plan-time refusal of bad rows and settings, unpaired rows from a file or split from pairs, and
real KTOTrainer steps on a tiny model (the SFT adapter continues against a frozen copy of itself, so
the first loss is 1 - sigmoid(0) = 0.5 and the first KL estimate 0)."""
import json
from pathlib import Path

import pytest
import torch
from conftest import compose
from safetensors.torch import load_file

from pipeline.data.datasets import DataError
from pipeline.engine.plan import build_plan
from pipeline.engine.runner import run_chain
from pipeline.engine.store import Store
from pipeline.errors import ConfigError
from pipeline.stages.train.kto import unpaired_rows


def _plan(tmp_path, *overrides):
    cfg = compose(["recipe=sft_kto", "logger=none", *overrides])
    return build_plan(cfg, Store(tmp_path / "store"), recipe="sft_kto", device="cpu")


def test_recipe_plans_kto_on_the_sft_adapter(tmp_path):
    plan = _plan(tmp_path)
    steps = {s.name: s for s in plan.steps}
    assert [s.name for s in plan.steps] == ["sft", "eval_sft", "kto", "eval_kto"]
    assert steps["kto"].input_names == ["sft"] and steps["kto"].output_kind == "adapter"
    assert steps["kto"].cfg.reference.value == "input" and steps["kto"].cfg.beta == 0.3


def test_pairs_split_into_one_desirable_and_one_undesirable_row(tmp_path):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"prompt": f"{i} + 1?", "chosen": f"#### {i + 1}", "rejected": f"#### {i}"})
                             + "\n" for i in range(3)))
    rows = unpaired_rows({"path": str(pairs)}, {})
    assert len(rows) == 6 and sum(rows["label"]) == 3
    good = [r for r in rows if r["label"]]
    assert {r["completion"][0]["content"] for r in good} == {"#### 1", "#### 2", "#### 3"}
    own = tmp_path / "own.jsonl"
    own.write_text(json.dumps({"prompt": "2 + 2?", "completion": "#### 4", "label": True}) + "\n"
                   + json.dumps({"prompt": "2 + 2?", "completion": "#### 5", "label": False}) + "\n")
    rows = unpaired_rows({"path": str(own)}, {})
    assert rows["label"] == [True, False] and rows[1]["prompt"] == [{"role": "user", "content": "2 + 2?"}]


def test_a_row_without_a_boolean_label_is_named_by_file_and_line(tmp_path):
    bad = tmp_path / "rows.jsonl"
    bad.write_text(json.dumps({"prompt": "1 + 1?", "completion": "#### 2", "label": True}) + "\n"
                   + json.dumps({"prompt": "2 + 2?", "completion": "#### 4", "label": "yes"}) + "\n")
    with pytest.raises(DataError, match=rf"^stages\.kto\.dataset: {bad}:2: 'label' must be true \(a desirable "
                                        r"completion\) or false, got string 'yes'"):
        _plan(tmp_path, f"stages.kto.dataset.path={bad}", "stages.kto.dataset.format=auto")


@pytest.mark.parametrize("override, message", [
    ("stages.kto.per_device_train_batch_size=1", r"^stages\.kto\.per_device_train_batch_size: 1; valid: >= 2 \(KTO "),
    ("stages.kto.loss_type=sigmoid", r"^stages\.kto\.loss_type: 'sigmoid'; valid: one of kto, apo_zero_unpaired"),
    ("stages.kto.desirable_weight=0", r"^stages\.kto\.desirable_weight: 0\.0; valid: > 0$"),
])
def test_bad_kto_settings_fail_at_plan_time(override, message, tmp_path):
    with pytest.raises(ConfigError, match=message):
        _plan(tmp_path, override)


def test_kto_continues_the_sft_adapter_against_a_frozen_copy(tiny_llama, tmp_path):
    overrides = [f"model.path={tiny_llama}", "model.name=tiny", "logger=none", "hardware.num_threads=1",
                 "recipe=sft_kto", "~stages.eval_sft", "~stages.eval_kto", "data.sft.limit=32",
                 "stages.sft.max_steps=4", "stages.sft.per_device_train_batch_size=4", "stages.sft.learning_rate=1e-2",
                 "data.preference.limit=12", "data.preference_test.limit=4", "stages.kto.max_steps=3",
                 "stages.kto.per_device_train_batch_size=4", "stages.kto.per_device_eval_batch_size=8",
                 "stages.kto.logging_steps=1", "stages.kto.learning_rate=1e-3", f"paths.store={tmp_path / 'store'}"]
    record = run_chain(compose(overrides), tmp_path / "run", "sft_kto", overrides, None)
    assert record["status"] == "done"
    stages = {s["name"]: s for s in record["stages"]}
    metrics = stages["kto"]["metrics"]
    assert metrics["loss_first"] == pytest.approx(0.5, abs=1e-4)  # policy == reference: 1 - sigmoid(0)
    assert metrics["train_records"] == 24 and metrics["train_desirable"] == 12 and metrics["eval_records"] == 8
    assert {"eval_reward_margin", "eval_kl", "eval_loss"} <= set(metrics)
    folder = Path(stages["kto"]["artifact"])
    manifest = json.loads((folder / "artifact.json").read_text())
    assert manifest["kind"] == "adapter" and manifest["meta"]["trained"].startswith("continuing")
    before = load_file(Path(stages["sft"]["artifact"]) / "adapter_model.safetensors")
    after = load_file(folder / "adapter_model.safetensors")
    assert before.keys() == after.keys() and any(not torch.equal(before[k], after[k]) for k in before)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    first = next(r for r in rows if r["stage"] == "kto" and "kl" in r)
    assert first["kl"] == pytest.approx(0, abs=1e-5)  # the KL estimate starts at 0: policy == reference
    assert any("rewards/chosen" in r for r in rows if r["stage"] == "kto")  # what W&B gets
