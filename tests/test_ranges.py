"""Valid ranges declared beside the config fields (pipeline/ranges.py): every numeric field of every
stage, model and data config has one, and a plan reports all out-of-range values together, naming
key, value and range, before any stage runs."""
import dataclasses
import typing

import pytest

from conftest import compose, run_main
from pipeline.engine import registry
from pipeline.engine.plan import build_plan
from pipeline.engine.store import Store
from pipeline.errors import ConfigError
from pipeline.models.config import ModelConfig
from pipeline.ranges import Range, problems


def _numeric_fields(cls, where, seen):
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        if dataclasses.is_dataclass(hint):
            if hint not in seen:
                seen.add(hint)
                yield from _numeric_fields(hint, f"{where}.{f.name}", seen)
            continue
        inner = [a for a in typing.get_args(hint) if a is not type(None)] if typing.get_origin(hint) is typing.Union else [hint]
        if inner and inner[0] in (int, float):
            yield f"{where}.{f.name}", f


def test_every_numeric_field_declares_its_range():
    from pipeline.evaluation import registry as eval_tasks

    classes = [(kind, registry.get(kind).config_cls) for kind in registry.kinds()] + [("model", ModelConfig)]
    # every eval task's own settings (the eval config's `settings` holds them; listed here should that change)
    classes += [(f"eval.settings.{name}", spec.settings)
                for name, spec in eval_tasks.all_tasks().items() if spec.settings]
    missing = [key for where, cls in classes for key, f in _numeric_fields(cls, where, set()) if "range" not in f.metadata]
    assert not missing, f"numeric fields without a declared range: {missing}"


def test_ranges_say_what_is_valid():
    assert str(Range(low=1, also=(-1,))) == ">= 1 or -1" and 0 not in Range(low=1, also=(-1,))
    assert -1 in Range(low=1, also=(-1,))
    assert str(Range(low=0, high=1, high_open=True)) == "[0, 1)" and 1.0 not in Range(low=0, high=1, high_open=True)
    assert str(Range(low=0, low_open=True)) == "> 0" and 0 not in Range(low=0, low_open=True)
    assert True not in Range(low=0)  # a bool is not a number here
    assert "cosine" in Range(choices=("cosine",)) and "Cosine" not in Range(choices=("cosine",))


def test_scheduler_names_match_transformers():
    from transformers.trainer_utils import SchedulerType

    from pipeline.training.common import SCHEDULERS

    assert set(SCHEDULERS) == {s.value for s in SchedulerType}


BAD = ["stages.sft.lora.r=-1", "stages.sft.lora.dropout=1.5", "stages.sft.learning_rate=-1",
       "stages.sft.per_device_train_batch_size=0", "stages.sft.max_length=0", "stages.sft.max_steps=0",
       "stages.sft.lr_scheduler_type=cosin", "stages.eval_base.max_new_tokens.math=0",
       "stages.eval_base.settings.perplexity.stride=0", "hardware.num_processes=0",
       "model.dtype=fp16"]


def test_the_plan_reports_every_bad_value_at_once(tmp_path):
    with pytest.raises(ConfigError) as caught:
        build_plan(compose(["logger=none", *BAD]), Store(tmp_path), recipe="quickstart", device="cpu")
    message = str(caught.value)
    assert message.startswith(f"{len(BAD)} value(s) out of range")
    for line in ("stages.sft.lora.r: -1; valid: >= 1", "stages.sft.lora.dropout: 1.5; valid: [0, 1)",
                 "stages.sft.learning_rate: -1.0; valid: > 0", "stages.sft.max_steps: 0; valid: >= 1 or -1",
                 "stages.sft.lr_scheduler_type: 'cosin'; valid: one of linear, cosine",
                 "stages.eval_base.max_new_tokens.math: 0; valid: >= 1",
                 "stages.eval_base.settings.perplexity.stride: 0; valid: >= 1", "hardware.num_processes: 0; valid: >= 1",
                 "model.dtype: 'fp16'; valid: one of auto, float32, bfloat16, float16"):
        assert line in message, message


@pytest.mark.parametrize("kind, override, key", [
    ("dpo", "stages.dpo.beta=0", "beta"), ("grpo", "stages.grpo.top_p=0", "top_p"),
    ("grpo", "stages.grpo.epsilon=-0.1", "epsilon"), ("grpo", "stages.grpo.num_generations=1", "num_generations"),
])
def test_rl_stage_ranges(kind, override, key, tmp_path):
    recipe = {"dpo": "sft_dpo", "grpo": "sft_grpo"}[kind]
    with pytest.raises(ConfigError, match=rf"stages\.{kind}\.{key}: "):
        build_plan(compose([f"recipe={recipe}", "logger=none", override]), Store(tmp_path), recipe=recipe, device="cpu")


def test_a_bad_value_on_the_command_line_starts_no_work(tmp_path):
    """peft's ValueError for r=-1 used to come after eval_base had run; now nothing runs."""
    result = run_main(["logger=none", "stages.sft.lora.r=-1", "stages.sft.learning_rate=-1"], tmp_path)
    assert result.returncode == 2
    assert "stages.sft.lora.r: -1; valid: >= 1" in result.stderr and "stages.sft.learning_rate" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "store").exists()


def test_problems_walks_nested_configs_and_skips_unset_values(tmp_path):
    from pipeline.stages.train.sft import SFTConfig

    cfg = compose(["logger=none"])
    typed = build_plan(cfg, Store(tmp_path), recipe="quickstart", device="cpu").steps[1].cfg
    assert isinstance(typed, SFTConfig) and problems(typed, "stages.sft") == []
    assert problems(dataclasses.replace(typed, lora=dataclasses.replace(typed.lora, r=0)), "s") == ["s.lora.r: 0; valid: >= 1"]


@pytest.mark.parametrize("override, line", [
    ("stages.sft.learning_rate=nan", "stages.sft.learning_rate: nan; valid: > 0"),  # nan passes every bound
    ("stages.sft.learning_rate=inf", "stages.sft.learning_rate: inf; valid: > 0"),
    ("stages.sft.lora.dropout=nan", "stages.sft.lora.dropout: nan; valid: [0, 1)"),
    ("seed=-1", "seed: -1; valid: an integer in [0, 4294967295]"),
    ("model.lora_target_modules=[q_proj,qkv]", "model.lora_target_modules: ['qkv'] match no module of"),
])
def test_values_that_used_to_start_work_are_refused_at_plan_time(override, line, tmp_path):
    with pytest.raises(ConfigError) as caught:
        build_plan(compose(["logger=none", override]), Store(tmp_path), recipe="quickstart", device="cpu")
    assert line in str(caught.value) and "\n" not in str(caught.value), str(caught.value)


def test_lora_targets_that_match_nothing_name_the_modules_there_are(tmp_path):
    with pytest.raises(ConfigError, match=r"^stages\.sft\.lora\.target_modules: \['qkv_proj'\] match no module of "
                                          r".*its layers' modules: down_proj, gate_proj, .*q_proj"):
        build_plan(compose(["logger=none", "stages.sft.lora.target_modules=[q_proj,qkv_proj]"]), Store(tmp_path),
                   recipe="quickstart", device="cpu")


def test_a_store_that_is_a_file_and_cuda_on_a_cpu_torch_are_refused(tmp_path):
    import torch

    from pipeline.errors import PlanError

    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(ConfigError, match=r"^paths\.store: .*file is a file, not a folder"):
        build_plan(compose(["logger=none"]), Store(tmp_path / "file"), recipe="quickstart", device="cpu")
    if torch.cuda.is_available():
        pytest.skip("a GPU is here: cuda is valid")
    with pytest.raises(PlanError, match=r"^hardware\.device: cuda, but this torch .*set hardware\.device=cpu"):
        build_plan(compose(["logger=none"]), Store(tmp_path / "store"), recipe="quickstart", device="cuda")


def test_a_task_whose_packages_are_missing_is_refused_before_any_answer(tmp_path, monkeypatch):
    """`tasks=[math,instruct]` without the eval extra used to generate every answer, then die on
    `import sacrebleu`; each task declares its packages and the plan checks them."""
    import importlib.util

    from pipeline.errors import PlanError

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "sacrebleu" else real(name, *a))
    with pytest.raises(PlanError, match=r"^stages\.eval_base\.tasks: 'instruct' needs sacrebleu, not installed: "
                                        r"pip install -e '\.\[eval\]'$"):
        build_plan(compose(["logger=none", "stages.eval_base.tasks=[math,instruct]"]), Store(tmp_path),
                   recipe="quickstart", device="cpu")
