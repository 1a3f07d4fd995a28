"""Merge a LoRA adapter into its base model and save a standalone safetensors HF model.

    python main.py recipe=lora_merge

The result carries the tokenizer, chat template and generation config, so every later stage
(export, eval, serve) can load it from its folder alone.

An adapter trained on a 4-bit base (QLoRA) learned to correct the *quantized* weights, so by
default it is merged into the base as the trainer saw it: quantized with the recorded settings,
then dequantized (merging into the original 16-bit weights loses quality: axolotl #1263). The
manifest says which was done.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from pipeline.ranges import setting
from pipeline.artifact import Artifact
from pipeline.engine.context import Inputs, StageContext
from pipeline.engine.registry import stage
from pipeline.errors import ConfigError
from pipeline.models.loading import load_causal_lm, load_tokenizer, model_class, save_tokenizer, torch_dtype
from pipeline.models.memory import BYTES_PER_PARAM, Workload
from pipeline.engine.contract import StageConfig

MERGE_TARGETS = ("auto", "original", "dequantized")


@dataclass
class MergeConfig(StageConfig):
    kind: str = setting("merge", "the stage kind")
    dtype: Optional[str] = setting(None, "null: the model config's dtype")
    merge_into: str = setting("auto", "auto: the dequantized base for QLoRA adapters, else the original weights")

    def disk_bytes(self, n_params: int, dtype: str) -> int:
        """What the merged model writes (pipeline.engine.plan checks the store's free space against it)."""
        return int(n_params * BYTES_PER_PARAM.get(self.dtype or dtype, 4))

    def validate(self, where: str, earlier: dict) -> None:
        if self.merge_into not in MERGE_TARGETS:
            raise ConfigError(f"{where}.merge_into: '{self.merge_into}'; valid: {', '.join(MERGE_TARGETS)}")

    def memory_profile(self, sources):

        return Workload(kind="inference", extra_weights=0.5)  # saving writes a copy of the merged weights


@stage("merge", config=MergeConfig, consumes={"adapter"}, produces="model", libraries=("torch", "transformers", "peft"))
def run(cfg: MergeConfig, inputs: Inputs, ctx: StageContext) -> Artifact:
    """Fold the adapter's weights into the base and save the merged model."""
    adapter = inputs.primary
    meta = merge_adapter(adapter, ctx, Path(ctx.out_dir), cfg.dtype, cfg.merge_into)
    ctx.log(f"merged {adapter.path} into the {meta['merged_into']} of {adapter.base_model} "
            f"({meta['params'] / 1e6:.1f}M params)")
    return Artifact(kind="model", path=str(ctx.out_dir), fingerprint="", format="hf",
                    base_model=adapter.base_model, metrics={"params": meta.pop("params")}, meta=meta)


def merge_adapter(adapter: Artifact, ctx, out_dir: Path, dtype: Optional[str] = None,
                  merge_into: str = "auto") -> dict:
    """Write the merged standalone model to `out_dir`; returns what the manifest should record."""
    from peft import PeftModel

    quantized = adapter.meta.get("quantized_base")
    if merge_into == "dequantized" and not quantized:
        raise ConfigError(f"merge_into 'dequantized': adapter {adapter.path} was not trained on a quantized base")
    if quantized and merge_into in ("auto", "dequantized"):
        target = torch_dtype(dtype or ctx.model.dtype, ctx.device, ctx.model.path)
        base = _dequantized_base(adapter.base_model, quantized, ctx, target)
        merged = PeftModel.from_pretrained(base, adapter.path).merge_and_unload()
        merged_into = f"dequantized {quantized.get('bnb_4bit_quant_type', '4-bit')} base"
    else:
        merged = load_causal_lm(adapter, ctx.model, ctx.device, dtype, merge_adapter=True)
        merged_into = "original base weights"
    merged.save_pretrained(str(out_dir), safe_serialization=True)
    save_tokenizer(load_tokenizer(adapter.tokenizer_dir(), ctx.model), adapter, out_dir)
    return {"merged_from": adapter.path, "merged_into": merged_into, "quantized_base": quantized,
            "params": sum(p.numel() for p in merged.parameters())}


def _dequantized_base(base_path: str, settings: dict, ctx, dtype):
    """The base quantized exactly as QLoRA trained on it, then dequantized back to `dtype`."""
    import torch
    from transformers import BitsAndBytesConfig

    compute = getattr(torch, settings.get("bnb_4bit_compute_dtype", "float32"))
    quant = BitsAndBytesConfig(**{**settings, "bnb_4bit_compute_dtype": compute})
    model = model_class(base_path, ctx.model).from_pretrained(base_path, quantization_config=quant, dtype=compute,
                                                 trust_remote_code=ctx.model.trust_remote_code,
                                                 device_map={"": ctx.device if ctx.device != "cuda" else 0})
    model = model.dequantize()
    return model.to(dtype)
