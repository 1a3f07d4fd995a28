"""Depth pruning: a copy of a model with fewer decoder layers, as a smaller student that keeps the
teacher's tokenizer, embeddings and head (what logit distillation needs).

    python main.py recipe=distill                                  # the student is the pruned base
    python main.py recipe=distill stages.student.keep_fraction=0.5

Which layers stay: `layers` when given, else `keep_fraction` of them spread evenly from the first
to the last (both kept: the first layers build the token representations, the last ones map them
to the head). Layer-dropping studies (ShortGPT, Men et al. 2024; Gromov et al. 2024) find that
middle layers are the most redundant; the even spread removes from everywhere but the ends, with
no calibration data, so the same config gives the same student on every machine.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

from pipeline.artifact import Artifact
from pipeline.engine.context import Inputs, StageContext
from pipeline.engine.registry import stage
from pipeline.errors import ConfigError
from pipeline.models.loading import load_causal_lm, load_tokenizer, save_tokenizer
from pipeline.models.memory import Workload
from pipeline.ranges import at_least, between, setting
from pipeline.engine.contract import StageConfig


@dataclass
class PruneConfig(StageConfig):
    kind: str = setting("prune", "the stage kind")
    keep_fraction: float = between(0.75, 0, 1, low_open=True, help="of the decoder layers, rounded, at least 1")
    layers: Optional[List[int]] = at_least(0, None, help="or exactly these layer indices (0-based, ascending)")
    dtype: Optional[str] = setting(None, "null: the model config's dtype")

    def validate(self, where: str, earlier: dict) -> None:
        if self.layers is not None and (not self.layers or sorted(set(self.layers)) != list(self.layers)
                                        or self.layers[0] < 0):
            raise ConfigError(f"{where}.layers: distinct ascending indices >= 0, e.g. [0, 2, 3]; got {self.layers}")

    def check_model(self, where: str, folder: Path | None) -> None:
        """Plan time, where the chain's model is a local folder: the indices exist in it."""
        depth = model_depth(folder) if folder else None
        if depth is not None and self.layers is not None and self.layers[-1] >= depth:
            raise ConfigError(f"{where}.layers: {self.layers} names layer {self.layers[-1]}, but the model has "
                              f"{depth} (valid: 0..{depth - 1})")

    def kept(self, depth: int) -> list[int]:
        if self.layers is not None:
            if self.layers[-1] >= depth:
                raise ConfigError(f"layers: {self.layers} names layer {self.layers[-1]}, but the model has {depth}")
            return list(self.layers)
        return evenly_spaced(depth, max(1, round(depth * self.keep_fraction)))

    def memory_profile(self, sources):
        return Workload(kind="inference", extra_weights=0.5)  # saving writes a copy of the kept weights


def evenly_spaced(depth: int, keep: int) -> list[int]:
    """`keep` of `depth` indices, the first and the last among them, the rest spread evenly between."""
    if keep >= depth:
        return list(range(depth))
    if keep == 1:
        return [0]
    return sorted({round(i * (depth - 1) / (keep - 1)) for i in range(keep)})


def model_depth(folder: Path) -> int | None:
    config = Path(folder) / "config.json"
    if not config.is_file():
        return None
    return json.loads(config.read_text()).get("num_hidden_layers")


def drop_layers(model, keep: list[int]) -> None:
    """Keep only the decoder layers `keep`, renumbered so that the KV cache indexes them densely."""
    import torch

    decoder = model.get_decoder()
    decoder.layers = torch.nn.ModuleList(decoder.layers[i] for i in keep)
    for new_index, layer in enumerate(decoder.layers):
        attention = getattr(layer, "self_attn", None)
        if attention is not None and hasattr(attention, "layer_idx"):
            attention.layer_idx = new_index
    config = model.config
    layer_types = getattr(config, "layer_types", None)  # Qwen3, Gemma: sliding/full attention per layer
    if layer_types is not None:
        config.layer_types = [layer_types[i] for i in keep]
    config.num_hidden_layers = len(keep)


@stage("prune", config=PruneConfig, consumes={"model"}, produces="model")
def run(cfg: PruneConfig, inputs: Inputs, ctx: StageContext) -> Artifact:
    """Drop decoder layers of a model and save the smaller one with its tokenizer."""
    source = inputs.primary
    model = load_causal_lm(source, ctx.model, "cpu", cfg.dtype)  # surgery and saving need no accelerator
    depth = model.config.num_hidden_layers
    keep = cfg.kept(depth)
    before = sum(p.numel() for p in model.parameters())
    drop_layers(model, keep)
    after = sum(p.numel() for p in model.parameters())
    model.save_pretrained(str(ctx.out_dir), safe_serialization=True)
    save_tokenizer(load_tokenizer(source.tokenizer_dir(), ctx.model), source, ctx.out_dir)
    ctx.log(f"kept {len(keep)} of {depth} layers {keep}: {before / 1e6:.1f}M -> {after / 1e6:.1f}M params")
    return Artifact(kind="model", path=str(ctx.out_dir), fingerprint="", format="hf",
                    base_model=str(ctx.out_dir), metrics={"params": after, "source_params": before},
                    meta={"kept_layers": keep, "source_layers": depth, "pruned_from": source.path})
