"""Schemas that conf/ YAML files extend through Hydra's ConfigStore, so every key has its default,
its type and its help in one dataclass, checked at composition time:

    conf/model/<name>.yaml   defaults: [_schema, _self_]           -> ModelConfig
    conf/stage/<kind>.yaml   defaults: [schema/<kind>@_here_, _self_] -> the kind's config dataclass

A YAML then holds only what differs from the dataclass: links to the model entry and the data
(`${model.tuning.sft.learning_rate}`, `${data.sft}`) and a variant's own values."""
from __future__ import annotations

from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

from pipeline.engine import registry
from pipeline.engine.help import help_text
from pipeline.models.config import ModelConfig

MODEL_SCHEMA = "_schema"
STAGE_SCHEMAS = "stage/schema"


def register() -> None:
    if not OmegaConf.has_resolver("tunechain_help"):  # conf/config.yaml: hydra.help.template
        OmegaConf.register_new_resolver("tunechain_help", help_text)
    store = ConfigStore.instance()
    store.store(group="model", name=MODEL_SCHEMA, node=ModelConfig)
    for kind in registry.kinds():
        store.store(group=STAGE_SCHEMAS, name=kind, node=registry.get(kind).config_cls)
