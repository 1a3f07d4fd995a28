"""The stage registry and config checking against stage dataclasses."""
import pytest

from pipeline.engine import registry
from pipeline.engine.typed_config import typed_config
from pipeline.errors import ConfigError
from pipeline.stages.train.sft import SFTConfig


def test_every_listed_module_registers_its_kind():
    assert {"sft", "eval", "merge"} <= set(registry.kinds())
    spec = registry.get("sft")
    assert spec.consumes == {"model"}
    assert spec.output_kind(SFTConfig(method="full")) == "model"
    assert spec.output_kind(SFTConfig()) == "adapter"
    assert registry.get("eval").output_kind(None) == "eval"


def test_unknown_kind_lists_known_kinds():
    with pytest.raises(ConfigError, match=r"unknown stage kind 'sftt'; known kinds: .*sft"):
        registry.get("sftt")


def test_typed_config_fills_defaults_and_converts_types():
    tuned = {"max_steps": 200, "per_device_train_batch_size": 8, "max_length": 512}  # a model entry's (model.tuning.sft)
    cfg = typed_config({"dataset": {"path": "x.jsonl"}, "learning_rate": "3e-4", "lora": {"r": "8"}, **tuned}, SFTConfig,
                       "stages.sft")
    assert cfg.learning_rate == 3e-4 and cfg.lora.r == 8 and cfg.max_steps == 200 and cfg.packing is False
    assert cfg.dataset.path == "x.jsonl" and cfg.dataset.format == "auto"


@pytest.mark.parametrize("node, message", [
    ({"lerning_rate": 1e-4}, r"^stages\.sft\.lerning_rate: unknown key \(did you mean 'learning_rate'\?\); valid keys: kind, "),
    ({"lora": {"rank": 8}}, r"^stages\.sft\.lora\.rank: unknown key; valid keys: r, alpha"),
    ({"learning_rate": "abc"}, r"^stages\.sft\.learning_rate: Value 'abc' of type 'str' could not be converted to Float$"),
    ({"method": "qlora"}, r"^stages\.sft\.method: Invalid value 'qlora', expected one of \[full, lora\]$"),
    ({"max_steps": 1.5}, r"^stages\.sft\.max_steps: "),
])
def test_bad_stage_config_names_key_and_valid_values(node, message):
    with pytest.raises(ConfigError, match=message):
        typed_config({"dataset": {"path": "x.jsonl"}, **node}, SFTConfig, "stages.sft")


def test_missing_required_value_is_named():
    with pytest.raises(ConfigError, match=r"stages\.sft\.dataset.*required|stages\.sft\.dataset"):
        typed_config({}, SFTConfig, "stages.sft")
