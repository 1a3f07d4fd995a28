"""Depth pruning (the distill recipe's student): the layers kept, a pruned model that reloads from its
folder alone and decodes the same with and without its KV cache, plan-time errors on bad layer
indices, and the recipe's student trained through the runner."""
import json
from pathlib import Path

import pytest
from conftest import EMBEDDED, compose

from pipeline.errors import ConfigError
from exports.prune import PruneConfig, drop_layers, evenly_spaced


def test_evenly_spaced_keeps_the_ends_and_the_count():
    assert evenly_spaced(4, 3) == [0, 2, 3]
    assert evenly_spaced(30, 22)[0] == 0 and evenly_spaced(30, 22)[-1] == 29 and len(evenly_spaced(30, 22)) == 22
    assert evenly_spaced(5, 5) == [0, 1, 2, 3, 4] and evenly_spaced(5, 1) == [0]
    assert PruneConfig(keep_fraction=0.5).kept(4) == [0, 3] and PruneConfig(layers=[1, 2]).kept(4) == [1, 2]


def test_pruned_model_reloads_and_decodes_the_same_with_its_cache(tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(EMBEDDED, dtype=torch.float32).eval()
    prompt = torch.tensor([[1, 40, 41, 300, 9, 12, 88]])
    with torch.inference_mode():
        full = model(input_ids=prompt).logits
    drop_layers(model, [0, 2, 3])
    assert [layer.self_attn.layer_idx for layer in model.model.layers] == [0, 1, 2]
    with torch.inference_mode():   # a static cache holds exactly num_hidden_layers layers
        static = model.generate(prompt, max_new_tokens=12, do_sample=False, cache_implementation="static")
    model.save_pretrained(tmp_path)
    pruned = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    assert pruned.config.num_hidden_layers == 3 and len(pruned.model.layers) == 3
    assert json.loads((tmp_path / "config.json").read_text())["num_hidden_layers"] == 3
    with torch.inference_mode():
        logits = pruned(input_ids=prompt).logits
        assert not torch.allclose(logits, full, atol=1e-3)        # a layer really went
        cached = pruned.generate(prompt, max_new_tokens=12, do_sample=False, use_cache=True)
        uncached = pruned.generate(prompt, max_new_tokens=12, do_sample=False, use_cache=False)
    assert cached.tolist() == uncached.tolist() == static.tolist()


@pytest.mark.parametrize("override, message", [
    ("stages.student.layers=[0,9]", r"stages\.student\.layers: \[0, 9\] names layer 9, but the model has 4 \(valid: 0\.\.3\)"),
    ("stages.student.layers=[2,1]", r"stages\.student\.layers: distinct ascending"),
    ("stages.student.keep_fraction=0", r"stages\.student\.keep_fraction: 0\.0; valid: \(0, 1\]"),
])
def test_bad_layer_choices_fail_at_plan_time(override, message, tmp_path):
    from pipeline.engine.plan import build_plan
    from pipeline.engine.store import Store

    with pytest.raises(ConfigError, match=message):
        build_plan(compose(["recipe=distill", "logger=none", override]), Store(tmp_path), recipe="distill", device="cpu")


def test_distill_recipes_student_is_pruned_then_trained(tmp_path):
    from pipeline.artifact import Artifact
    from pipeline.engine.runner import run_chain

    cfg = compose(["recipe=distill", "logger=none", "hardware.num_threads=1",
                   "model.tuning.distill.student_keep_fraction=0.75",
                   "~stages.teacher", "~stages.eval_teacher", "~stages.distill", "~stages.eval_distill",
                   "stages.eval_sft_student.compare_with=null", "stages.sft_student.max_steps=3",
                   "stages.eval_sft_student.limit=4", "stages.eval_sft_student.tasks=[math]",
                   f"paths.store={tmp_path / 'store'}"])
    record = run_chain(cfg, tmp_path / "run", "distill", [], None)
    assert record["status"] == "done", record
    student = Artifact.read(Path(record["stages"][0]["artifact"]))
    assert student.meta["kept_layers"] == [0, 2, 3] and student.meta["source_layers"] == 4
    assert student.base_model == student.path and student.metrics["params"] < student.metrics["source_params"]
    adapter = Artifact.read(Path(record["stages"][1]["artifact"]))
    assert adapter.kind == "adapter" and adapter.base_model == student.path   # LoRA on the pruned model
    assert record["stages"][2]["metrics"]["math_n"] == 4
