"""Tiny random copies of the text families people fine-tune, each with a tokenizer of its own kind.

`build_family(family, out, bpe_folder)` writes a folder that loads offline with AutoModelForCausalLM: a
randomly initialised model built from the family's transformers config (2 layers, hidden 128, heads of
64 as real models have; experts, sliding windows and linear-attention layers where the family has
them), and a tokenizer of the family's kind so llama.cpp's converter judges the architecture, not the
tokenizer: byte-level BPE (SmolLM2's, 49,152 tokens, from `bpe_folder`) or SentencePiece (the embedded
model's, 3,072 tokens). Both carry a ChatML template that stops on <|im_end|>.
tests/test_families.py runs the chain on each; scripts/family_table.py writes the README's table.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EMBEDDED = ROOT / "embedded" / "model"

# Shapes every family shares: heads of 64 (real models use 64-256; the converter and llama.cpp's kernels
# assume such sizes), 2 heads over 1 key/value head (GQA), 2 layers.
COMMON = dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2,
              num_key_value_heads=1, head_dim=64, max_position_embeddings=1024)
MOE = dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=64)

# family -> (model_type, the config's own fields, tokenizer kind, what people run of it). Embeddings are tied
# where the family's released models tie them (llama.cpp's gpt-oss loader wants an output.weight).
UNTIED = dict(tie_word_embeddings=False)
FAMILIES: dict[str, tuple[str, dict, str, str]] = {
    "llama": ("llama", {}, "bpe", "Llama 3.x, SmolLM2"),
    # transformers re-applies Qwen's pre-tokenizer to a qwen2 folder: SmolLM2's vocabulary under it is a tokenizer
    # no released model has, so this copy shows the converter's tokenizer check (a real Qwen2.5 converts)
    "qwen2": ("qwen2", {}, "bpe", "Qwen2.5 (this copy: SmolLM2's vocabulary, Qwen's pre-tokenizer)"),
    "qwen3": ("qwen3", {}, "bpe", "Qwen3 dense"),
    "qwen3_5": ("qwen3_5_text", dict(layer_types=["linear_attention", "full_attention"], linear_num_key_heads=2,
                                     linear_num_value_heads=2, linear_key_head_dim=32, linear_value_head_dim=32,
                                     linear_conv_kernel_dim=4), "bpe", "Qwen3.5 (linear + full attention)"),
    "qwen3_moe": ("qwen3_moe", dict(MOE, **UNTIED, decoder_sparse_step=1, norm_topk_prob=True), "bpe", "Qwen3-30B-A3B, Qwen3-235B-A22B"),
    "gpt_oss": ("gpt_oss", dict(**UNTIED, num_local_experts=4, num_experts_per_tok=2, intermediate_size=128,
                                sliding_window=128, layer_types=["sliding_attention", "full_attention"]),
                "bpe", "gpt-oss-20b, gpt-oss-120b"),
    "gemma2": ("gemma2", dict(sliding_window=128), "spm", "Gemma 2"),
    "gemma3_text": ("gemma3_text", dict(sliding_window=128, layer_types=["sliding_attention", "full_attention"]),
                    "spm", "Gemma 3 (text), Gemma 3 270M / 1B"),
    "mistral": ("mistral", dict(**UNTIED, sliding_window=None), "spm", "Mistral 7B"),
    "phi3": ("phi3", UNTIED, "spm", "Phi-3 mini, Phi-3.5 mini"),
    "olmo2": ("olmo2", UNTIED, "bpe", "OLMo 2"),
    "smollm3": ("smollm3", {}, "bpe", "SmolLM3"),
    "granite": ("granite", {}, "bpe", "Granite 3.x"),
    "gemma4_text": ("gemma4_text", dict(sliding_window=128, layer_types=["sliding_attention", "full_attention"],
                                        hidden_size_per_layer_input=16), "spm", "Gemma 4 (text)"),
    "phimoe": ("phimoe", dict(**UNTIED, num_local_experts=4, num_experts_per_tok=2), "spm", "Phi-3.5-MoE"),
}


# LoRA targets where the family names its projections otherwise than q/k/v/o/gate/up/down (a model entry's
# lora_target_modules): Phi-3 fuses qkv_proj and gate_up_proj; gpt-oss and Phi-3.5-MoE keep their MLPs in experts.
LORA_TARGETS = {"phi3": ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"],
                "gpt_oss": ["q_proj", "k_proj", "v_proj", "o_proj"], "phimoe": ["q_proj", "k_proj", "v_proj", "o_proj"]}


def build_family(family: str, out: Path, bpe_folder: Path) -> Path:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    model_type, fields, kind, _ = FAMILIES[family]
    source = bpe_folder if kind == "bpe" else EMBEDDED
    tokenizer = AutoTokenizer.from_pretrained(source)
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    if model_type == "gemma4_text":  # its per-layer input embeddings have a vocabulary of their own
        fields = {**fields, "vocab_size_per_layer_input": len(tokenizer)}
    config = AutoConfig.for_model(model_type, **{"tie_word_embeddings": True, **COMMON, **fields},
                                  vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id
                                  if tokenizer.pad_token_id is not None else end,
                                  eos_token_id=end, bos_token_id=tokenizer.bos_token_id)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.save_pretrained(out)
    for name in os.listdir(source):  # tokenizer files (incl. tokenizer.model) and the chat template
        if name.startswith("tokenizer") or name in ("special_tokens_map.json", "chat_template.jinja"):
            shutil.copy2(source / name, out / name)
    if model_type.startswith("gemma"):  # Gemma's tokenizers start every text with <bos> (llama.cpp's Gemma 4 assumes it)
        AutoTokenizer.from_pretrained(out, add_bos_token=True).save_pretrained(out)
    (out / "generation_config.json").write_text(json.dumps(
        {"eos_token_id": end, "pad_token_id": config.pad_token_id, "do_sample": False}))
    return out


def family_table(results: dict[str, dict]) -> str:
    """The README's family table (markdown) from tests/test_families.py's per-family summaries."""
    rows = ["| family | what people run of it | tokenizer | SFT batches | LoRA on experts | "
            "`recipe=smoke`: SFT, DPO, merge, reload, GGUF f16 | GGUF vs merged (greedy tokens) | stops at |",
            "|---|---|---|---|---|---|---|---|"]
    for family, (model_type, _, kind, people) in FAMILIES.items():
        found = results[family]
        tokenizer = "byte-level BPE" if kind == "bpe" else "SentencePiece"
        if "refused" in found:
            reason = found["refused"].removeprefix("stages.gguf: ").split("; keep this model")[0]
            rows.append(f"| {model_type} | {people} | {tokenizer} | - | - | refused at plan time: {reason} | - | - |")
            continue
        experts = "yes (`lora.experts: true`)" if found["experts"] else "-"
        stops = found["stops"].replace("|", "\\|")  # a pipe inside a table cell, even in code, ends the cell
        rows.append(f"| {model_type} | {people} | {tokenizer} | {found['batching']} | {experts} | done | "
                    f"{found['parity']} identical | `{stops}` |")
    return "\n".join(rows)
