"""Schemas that conf/ YAML files extend through Hydra's ConfigStore, so every key has a default and a
type at composition time (interpolations such as ${model.tuning.sft.max_steps} always resolve)."""
from __future__ import annotations

from pipeline.models.config import ModelConfig

MODEL_SCHEMA = "_schema"  # conf/model/*.yaml: `defaults: [_schema, _self_]`


def register() -> None:
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(group="model", name=MODEL_SCHEMA, node=ModelConfig)
