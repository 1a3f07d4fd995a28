"""ORPO and SimPO: no reference model. Plan-time refusals, and real trl steps on a tiny model that
continue the SFT adapter, score the held-out pairs and load one model only."""
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


def _plan(tmp_path, kind, *overrides):
    cfg = compose([f"recipe=sft_{kind}", "logger=none", *overrides])
    return build_plan(cfg, Store(tmp_path / "store"), recipe=f"sft_{kind}", device="cpu")


@pytest.mark.parametrize("kind", ["orpo", "simpo"])
def test_recipe_plans_the_stage_on_the_sft_adapter(tmp_path, kind):
    steps = {s.name: s for s in _plan(tmp_path, kind).steps}
    assert list(steps) == ["sft", "eval_sft", kind, f"eval_{kind}"]
    assert steps[kind].input_names == ["sft"] and steps[kind].output_kind == "adapter"
    assert not hasattr(steps[kind].cfg, "reference")  # nothing to choose: there is none


@pytest.mark.parametrize("kind, override, error, message", [
    ("orpo", "stages.orpo.dataset=${data.sft}", DataError, r"^stages\.orpo\.dataset: .*cannot feed a preference stage"),
    ("orpo", "stages.orpo.beta=0", ConfigError, r"^stages\.orpo\.beta: 0\.0; valid: > 0$"),
    ("simpo", "stages.simpo.gamma=-1", ConfigError, r"^stages\.simpo\.gamma: -1\.0; valid: >= 0$"),
    ("simpo", "stages.simpo.cpo_alpha=nan", ConfigError, r"^stages\.simpo\.cpo_alpha: nan; valid: >= 0$"),
])
def test_bad_data_and_settings_fail_at_plan_time(tmp_path, kind, override, error, message):
    with pytest.raises(error, match=message):
        _plan(tmp_path, kind, override)


@pytest.mark.parametrize("kind", ["orpo", "simpo"])
def test_the_sft_adapter_keeps_training_with_no_reference(tiny_llama, tmp_path, kind):
    overrides = [f"model.path={tiny_llama}", "model.name=tiny", "logger=none", "hardware.num_threads=1",
                 f"recipe=sft_{kind}", "~stages.eval_sft", f"~stages.eval_{kind}", "data.sft.limit=32",
                 "stages.sft.max_steps=4", "stages.sft.per_device_train_batch_size=4", "stages.sft.learning_rate=1e-2",
                 "data.preference.limit=24", "data.preference_test.limit=8", f"stages.{kind}.max_steps=3",
                 f"stages.{kind}.per_device_train_batch_size=4", f"stages.{kind}.per_device_eval_batch_size=8",
                 f"stages.{kind}.logging_steps=1", f"stages.{kind}.learning_rate=1e-3", f"paths.store={tmp_path / 's'}"]
    record = run_chain(compose(overrides), tmp_path / "run", f"sft_{kind}", overrides, None)
    assert record["status"] == "done"
    stages = {s["name"]: s for s in record["stages"]}
    metrics = stages[kind]["metrics"]
    assert metrics["train_steps"] == 3 and metrics["eval_records"] == 8
    assert {"eval_reward_margin", "eval_reward_accuracy", "eval_loss"} <= set(metrics)
    folder = Path(stages[kind]["artifact"])
    manifest = json.loads((folder / "artifact.json").read_text())
    assert manifest["kind"] == "adapter" and manifest["meta"]["trained"] == "continuing the input adapter"
    assert manifest["meta"]["reference"] is None
    before = load_file(Path(stages["sft"]["artifact"]) / "adapter_model.safetensors")
    after = load_file(folder / "adapter_model.safetensors")
    assert before.keys() == after.keys() and any(not torch.equal(before[k], after[k]) for k in before)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert any("rewards/margins" in r for r in rows if r["stage"] == kind)
