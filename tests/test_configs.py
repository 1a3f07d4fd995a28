"""Every shipped recipe and model config composes, validates and plans."""

import importlib.util

import pytest
from conftest import CONF, compose

from pipeline.engine.plan import build_plan
from pipeline.engine.store import Store
from pipeline.engine.typed_config import typed_config
from pipeline.errors import ModelUnavailable, PlanError
from pipeline.models.config import ModelConfig
from pipeline.models.loading import check_available

RECIPES = sorted(p.stem for p in (CONF / "recipe").glob("*.yaml"))
MODELS = sorted(p.stem for p in (CONF / "model").glob("*.yaml"))


def test_recipes_open_with_their_command():
    for name in RECIPES:
        lines = (CONF / "recipe" / f"{name}.yaml").read_text().splitlines()
        assert lines[0] == "# @package _global_", name
        assert lines[1].startswith("# python main.py"), name


@pytest.mark.parametrize("recipe", RECIPES)
def test_every_recipe_plans_on_the_embedded_model(recipe, tmp_path):
    cfg = compose([f"recipe={recipe}", "logger=none"])
    if recipe == "lora_then_gptq" and importlib.util.find_spec("gptqmodel") is None:
        with pytest.raises(PlanError, match=r"^stages\.gptq: kind gptq needs gptqmodel.*pip install"):
            build_plan(cfg, Store(tmp_path / "store"), recipe=recipe, device="cpu")
        return  # GPTQ is this recipe's point: without GPTQModel the plan stops, saying how to install it
    plan = build_plan(cfg, Store(tmp_path / "store"), recipe=recipe, device="cpu")
    assert plan.steps and all(s.fingerprint and not s.cached for s in plan.steps)
    assert "tunechain plan" in plan.render()


@pytest.mark.parametrize("model", MODELS)
def test_every_model_config_is_valid(model):
    extra = ["model.path=/models/my-llama"] if model == "custom" else []  # custom: a model given by path alone
    cfg = typed_config(compose([f"model={model}", *extra]).model, ModelConfig, "model")
    assert cfg.name == (None if model == "custom" else model) and cfg.trust_remote_code is False
    assert cfg.lora_target_modules and cfg.dtype in ("float32", "bfloat16", "float16", "auto")


def test_hub_model_without_network_fails_in_one_line(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = typed_config(compose(["model=qwen3-8b"]).model, ModelConfig, "model")
    with pytest.raises(ModelUnavailable) as error:
        check_available(cfg)
    assert "\n" not in str(error.value) and "Qwen/Qwen3-8B" in str(error.value)


PRESETS = sorted(p.stem for p in (CONF / "stage" / "preset").glob("*.yaml"))


@pytest.mark.parametrize("preset", PRESETS)
def test_method_presets_apply_over_the_recipe(preset):
    from pipeline.stages.train.sft import SFTConfig

    cfg = compose([f"+stage/preset@stages.sft={preset}"])
    typed = typed_config(cfg.stages.sft, SFTConfig, "stages.sft")
    assert typed.learning_rate != 2e-3  # the preset's rate replaced quickstart's
    assert f"#   python main.py +stage/preset@stages.sft={preset}" in (CONF / "stage" / "preset" / f"{preset}.yaml").read_text()


ALIGNERS = sorted(p.stem for p in (CONF / "align").glob("*.yaml"))


@pytest.mark.parametrize("aligner", ALIGNERS)
def test_full_chain_takes_any_aligner_with_its_recipe_settings(aligner, tmp_path):
    """`align@stages.align=<kind>` swaps full_chain's aligner; it carries the settings of recipe sft_<kind>,
    so a store that ran that recipe reuses its SFT and its aligner."""
    store = Store(tmp_path / "store")
    chain = build_plan(compose(["recipe=full_chain", f"align@stages.align={aligner}", "logger=none"]), store,
                       recipe="full_chain", device="cpu")
    alone = build_plan(compose([f"recipe=sft_{aligner}", "logger=none"]), store, recipe=f"sft_{aligner}", device="cpu")
    steps = {s.name: s for s in chain.steps}
    assert steps["align"].kind == aligner and steps["grpo"].input_names == ["align"]
    assert steps["align"].fingerprint == {s.name: s for s in alone.steps}[aligner].fingerprint
    assert f"python main.py recipe=full_chain align@stages.align={aligner}" in (CONF / "align" / f"{aligner}.yaml").read_text()
