"""What the plan says about a model's architecture before any work: its experts (counted whole, routed per
token) and its linear-attention layers (Gated DeltaNet in Qwen3.5 / Qwen3-Next: fast only with
flash-linear-attention's CUDA kernels, a fixed state per sequence instead of a growing KV cache, and a state
that runs across the sequences of a padding-free row, so padding-free stays off for them)."""
from __future__ import annotations

import importlib.util

from pipeline.models.experts import EXPERTS_PER_TOKEN_KEYS, expert_count, text_config

LINEAR_KERNELS = ("fla", "causal_conv1d")  # flash-linear-attention, causal-conv1d: what transformers looks for


def linear_attention_layers(config: dict) -> int:
    return sum(1 for t in text_config(config).get("layer_types") or [] if t == "linear_attention")


def linear_state_values(config: dict) -> int:
    """Values of one sequence's recurrent state over every linear-attention layer: the delta rule's
    heads x key dim x value dim, plus the short convolution's last (kernel - 1) inputs."""
    c = text_config(config)
    layers = linear_attention_layers(c)
    if not layers:
        return 0
    key_heads, value_heads = int(c.get("linear_num_key_heads", 0)), int(c.get("linear_num_value_heads", 0))
    key_dim, value_dim = int(c.get("linear_key_head_dim", 0)), int(c.get("linear_value_head_dim", 0))
    conv = (int(c.get("linear_conv_kernel_dim", 4)) - 1) * (2 * key_heads * key_dim + value_heads * value_dim)
    return layers * (value_heads * key_dim * value_dim + conv)


def architecture_notes(config: dict | None, device: str) -> list[str]:
    """One line per thing a user should know about this architecture on this device."""
    if not config:
        return []
    c = text_config(config)
    name = (config.get("architectures") or [c.get("model_type", "?")])[0]
    notes = []
    experts = expert_count(c)
    if experts:
        per_token = next((int(c[k]) for k in EXPERTS_PER_TOKEN_KEYS if c.get(k)), 1)
        notes.append(f"{name}: {experts} experts per layer, {per_token} routed per token; memory counts every "
                     f"expert's weights and the routed ones' activations; LoRA leaves the experts frozen unless "
                     f"lora.experts: true")
    linear = linear_attention_layers(c)
    if linear:
        kernels = all(importlib.util.find_spec(m) is not None for m in LINEAR_KERNELS)
        speed = ("their CUDA kernels (flash-linear-attention) are installed" if device == "cuda" and kernels else
                 "install flash-linear-attention and causal-conv1d on a CUDA GPU for their kernels (pip install "
                 "flash-linear-attention causal-conv1d); without them transformers runs a much slower PyTorch path")
        notes.append(f"{name}: {linear} of {c.get('num_hidden_layers')} layers are linear attention (Gated "
                     f"DeltaNet): {speed}; their state ({linear_state_values(c) * 4 / 2**20:.1f} MiB per sequence) "
                     f"replaces a KV cache; padding-free stays off (the state runs across a row's sequences)")
    return notes
