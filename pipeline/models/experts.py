"""Mixture-of-experts models: whether a config has experts, how wide one token's path through them is
(the memory plan), and the fused expert weights LoRA reaches through peft's `target_parameters`.

transformers 5 keeps a layer's experts as 3-D parameters (`mlp.experts.gate_up_proj`: experts x in x out)
rather than Linear modules, so LoRA's `target_modules` (even "all-linear") passes them by and they stay frozen.
"""
from __future__ import annotations

import re

EXPERT_COUNT_KEYS = ("num_experts", "num_local_experts", "n_routed_experts")
EXPERTS_PER_TOKEN_KEYS = ("num_experts_per_tok", "experts_per_token", "moe_topk")


def text_config(config: dict) -> dict:
    return config.get("text_config", config)


def expert_count(config: dict) -> int:
    """Experts per MoE layer; 0 for a dense model."""
    config = text_config(config)
    return next((int(config[k]) for k in EXPERT_COUNT_KEYS if config.get(k)), 0)


def active_mlp_width(config: dict) -> int | None:
    """The MLP width one token passes through: its routed experts' (plus a shared expert's); None when dense."""
    config = text_config(config)
    if not expert_count(config):
        return None
    per_token = next((int(config[k]) for k in EXPERTS_PER_TOKEN_KEYS if config.get(k)), 1)
    width = int(config.get("moe_intermediate_size") or config.get("intermediate_size") or 0)
    shared = int(config.get("shared_expert_intermediate_size") or 0)
    return per_token * width + shared


_LAYER_PREFIX = re.compile(r"^.*?\.layers\.\d+\.")


def fused_expert_parameters(model) -> list[str]:
    """peft `target_parameters` names of the model's fused expert weights (e.g. `mlp.experts.gate_up_proj`):
    the 3-D parameters under an `experts` module; [] where experts are Linear modules or there are none."""
    names = []
    for name, param in model.named_parameters():
        if param.ndim == 3 and ".experts." in name:
            suffix = _LAYER_PREFIX.sub("", name)
            if suffix not in names:
                names.append(suffix)
    return names
