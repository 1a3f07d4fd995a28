"""Merge a LoRA adapter into its base model and save a standalone safetensors HF model.

    python main.py recipe=sft_merge

The result carries the tokenizer, chat template and generation config, so every later stage
(export, eval, serve) can load it from its folder alone.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

from pipeline.artifacts import Artifact
from pipeline.context import Inputs, StageContext
from pipeline.registry import stage
from pipeline.training import save_tokenizer, tokenizer_source


@dataclass
class MergeConfig:
    kind: str = "merge"
    inputs: Optional[List[str]] = None
    dtype: Optional[str] = None     # null: the model config's dtype

    def memory_profile(self) -> str:
        return "inference"


@stage("merge", config=MergeConfig, consumes={"adapter"}, produces="model")
def run(cfg: MergeConfig, inputs: Inputs, ctx: StageContext) -> Artifact:
    """Fold the adapter's weights into the base and save the merged model."""
    from pipeline.models import load_causal_lm, load_tokenizer

    adapter = inputs.primary
    tokenizer = load_tokenizer(tokenizer_source(adapter), ctx.model)
    merged = load_causal_lm(adapter, ctx.model, ctx.device, cfg.dtype, merge_adapter=True)
    merged.save_pretrained(str(ctx.out_dir), safe_serialization=True)
    save_tokenizer(tokenizer, tokenizer_source(adapter), ctx.out_dir)
    n_params = sum(p.numel() for p in merged.parameters())
    ctx.log(f"merged {adapter.path} into {adapter.base_model} ({n_params / 1e6:.1f}M params)")
    return Artifact(kind="model", path=str(ctx.out_dir), fingerprint="", format="hf",
                    base_model=adapter.base_model, metrics={"params": n_params},
                    meta={"merged_from": adapter.path, "merged_into": "original base weights"})
