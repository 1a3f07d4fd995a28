"""Schemas that conf/ YAML files extend through Hydra's ConfigStore, so every key has a default and a
type at composition time (interpolations such as ${model.tuning.sft.max_steps} always resolve)."""
from __future__ import annotations

MODEL_SCHEMA = "_schema"  # conf/model/*.yaml: `defaults: [_schema, _self_]`
EVAL_SETTINGS = "_eval_settings"  # conf/stage/eval.yaml: `defaults: [_self_, _eval_settings@settings]`


def register() -> None:
    from hydra.core.config_store import ConfigStore
    from omegaconf import OmegaConf

    from pipeline.evaluation.registry import default_settings
    from pipeline.models.config import ModelConfig

    ConfigStore.instance().store(group="model", name=MODEL_SCHEMA, node=ModelConfig)
    # Every eval task's own settings at their dataclass defaults, as plain data (a recipe may add a key for a
    # task registered later; the plan types and checks them all): `stages.NAME.settings.speed.new_tokens=128`.
    # A task registered after this runs takes `+stages.NAME.settings.TASK.KEY=...`, or call register() again.
    settings = OmegaConf.to_container(OmegaConf.structured(default_settings()))
    ConfigStore.instance().store(group="stage", name=EVAL_SETTINGS, node=settings)
