"""Every shipped recipe on both shipped models resolves to the stage settings recorded in
tests/data/stage_settings.json: moving a default (YAML, dataclass, model entry) must not change
what a stage runs with. Rewrite the record only for an intended change:

    python tests/test_stage_settings.py   # writes tests/data/stage_settings.json
"""
import dataclasses
import enum
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import CONF, compose  # noqa: E402

RECORD = Path(__file__).parent / "data" / "stage_settings.json"
MODELS = ("embedded", "smollm2-135m")
RECIPES = sorted(p.stem for p in (CONF / "recipe").glob("*.yaml"))
# Keys that moved since the record, old -> new: each eval task owns its settings (settings.<task>.<key>).
MOVED = {f"{old}": f"settings.{new}" for old, new in {
    "speed_new_tokens": "speed.new_tokens", "speed_prompt_tokens": "speed.prompt_tokens", "speed_repeats": "speed.repeats",
    "perplexity_max_length": "perplexity.max_length", "perplexity_stride": "perplexity.stride",
    "tools_path": "tools.path", "tools_max_turns": "tools.max_turns", "mcq_path": "mcq.path", "mcq_style": "mcq.style",
    "code_path": "code.path", "code_timeout_s": "code.timeout_s", "lm_eval_tasks": "lm_eval.tasks",
    "lm_eval_num_fewshot": "lm_eval.num_fewshot"}.items()}


def _flat(value, prefix: str, out: dict) -> dict:
    if dataclasses.is_dataclass(value):
        value = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    if isinstance(value, dict) and value:
        for key, item in value.items():
            _flat(item, f"{prefix}.{key}" if prefix else str(key), out)
    elif isinstance(value, enum.Enum):
        out[prefix] = value.value
    elif isinstance(value, (list, tuple)):
        out[prefix] = [_flat(v, "", {}).get("", v) if not isinstance(v, (dict, list)) else v for v in value]
    else:
        out[prefix] = value
    return out


def resolved(recipe: str, model: str) -> dict:
    """stage name -> its typed config, flattened to dotted keys (what a stage runs with)."""
    from pipeline.engine import registry
    from pipeline.engine.typed_config import typed_config

    cfg = compose([f"recipe={recipe}", f"model={model}"])
    stages = {}
    for name in cfg.stages:
        node = cfg.stages[name]
        spec = registry.get(str(node.kind))
        typed = typed_config(node, spec.config_cls, f"stages.{name}")
        stages[str(name)] = {"optional": bool(node.get("optional", False)), **_flat(typed, "", {})}
    return stages


def all_resolved() -> dict:
    return {f"{recipe}/{model}": resolved(recipe, model) for recipe in RECIPES for model in MODELS}


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_resolves_to_recorded_settings(recipe, model):
    record = json.loads(RECORD.read_text())
    key = f"{recipe}/{model}"
    assert key in record, f"{key}: not in {RECORD.name}; record it (see this file's docstring)"
    now = json.loads(json.dumps(resolved(recipe, model)))  # tuples -> lists, as the record holds them
    for stage, settings in record[key].items():
        assert stage in now, f"{key}: stage {stage} is gone"
        settings = {MOVED.get(k, k): v for k, v in settings.items()}
        changed = {k: (v, now[stage].get(k, "<missing>")) for k, v in settings.items() if now[stage].get(k, "<missing>") != v}
        added = sorted(set(now[stage]) - set(settings))
        assert not changed and not added, f"{key} stages.{stage}: changed {changed}, new keys {added}"
    assert set(now) == set(record[key])


if __name__ == "__main__":
    RECORD.write_text(json.dumps(all_resolved(), indent=1, sort_keys=True) + "\n")
    print(f"wrote {RECORD}")
