"""QLoRA: LoRA on a 4-bit NF4 base (bitsandbytes, double quantization), as in Dettmers et al. 2023.

    python main.py recipe=qlora
    python main.py recipe=qlora_then_int4 model=qwen3-8b

The base is quantized on load, prepared for k-bit training (norms and embeddings in fp32, input
grads on) and trained through the same SFTTrainer path as `sft`. On a GPU the optimizer is paged
(spikes spill to CPU memory instead of OOM). bitsandbytes >= 0.50 also runs 4-bit on CPU, slowly.
The adapter's manifest records the quantization, so a later merge can dequantize the same way.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from enum import Enum

from pipeline.ranges import setting
from pipeline.artifact import Artifact
from pipeline.engine.context import Inputs, StageContext
from pipeline.engine.registry import TRAINING_LIBRARIES, stage
from pipeline.errors import ConfigError, PlanError
from pipeline.models.loading import is_vision, model_class
from pipeline.models.vision import PROJECTOR_NAMES, VISION_TOWER_NAMES
from pipeline.stages.train.sft import Method, SFTConfig, train
from pipeline.training.common import resolved_checkpointing

MIN_BNB_FOR_CPU = (0, 50)  # first bitsandbytes seen here to run NF4 load, train and save on CPU


class QuantType(str, Enum):
    nf4 = "nf4"
    fp4 = "fp4"


@dataclass
class QLoRAConfig(SFTConfig):
    kind: str = setting("qlora", "the stage kind")
    quant_type: QuantType = setting(QuantType.nf4, "nf4 | fp4")
    double_quant: bool = setting(True, "quantize the quantization constants too (~0.4 bit/param saved)")
    compute_dtype: str = setting("auto", "auto: bfloat16 where supported, else float16 on GPU; float32 on CPU")
    optim: str = setting("auto", "auto: paged_adamw_8bit on GPU, adamw_torch on CPU")

    def validate(self, where: str, earlier: dict) -> None:
        if self.method != Method.lora:
            raise ConfigError(f"{where}.method: QLoRA trains a LoRA adapter on a frozen 4-bit base; "
                              f"'{self.method.value}' is not possible (use kind sft with method full instead)")
        if self.compute_dtype not in ("auto", "bfloat16", "float16", "float32"):
            raise ConfigError(f"{where}.compute_dtype: '{self.compute_dtype}'; valid: auto, bfloat16, float16, float32")
        _bitsandbytes_version(where)

    def check_device(self, where: str, device: str) -> None:
        super().check_device(where, device)
        version = _bitsandbytes_version(where)
        if device == "cpu" and version < MIN_BNB_FOR_CPU:
            raise PlanError(f"{where}: bitsandbytes {'.'.join(map(str, version))} cannot run 4-bit on CPU; "
                            "install bitsandbytes>=0.50.2 (pip install -e '.[bnb]'), run on a GPU, "
                            "or use kind sft with method lora (same adapter, 16/32-bit base)")

    def memory_profile(self, sources):
        from dataclasses import replace

        return replace(super().memory_profile(sources), method="qlora")


def _bitsandbytes_version(where: str) -> tuple[int, ...]:
    from importlib.metadata import PackageNotFoundError, version

    try:
        raw = version("bitsandbytes")
    except PackageNotFoundError:
        raise ConfigError(f"{where}: kind qlora needs bitsandbytes, which is not installed: pip install -e '.[bnb]' "
                          "(or use kind sft with method lora)") from None
    return tuple(int(p) for p in raw.split(".")[:2] if p.isdigit())


def resolve_compute_dtype(name: str, device: str) -> str:
    if name != "auto":
        return name
    if device == "cuda":
        import torch

        return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    return "float32"  # bf16 4-bit matmuls measured 6x slower than fp32 on a 2-core CPU


def quantization_settings(cfg: QLoRAConfig, device: str, vision: bool = False) -> dict:
    """What the manifest records and what BitsAndBytesConfig gets. A vision-language model's image encoder and
    projector stay in the compute dtype (frozen, small, and sensitive to 4-bit rounding)."""
    settings = {"load_in_4bit": True, "bnb_4bit_quant_type": cfg.quant_type.value,
                "bnb_4bit_use_double_quant": cfg.double_quant,
                "bnb_4bit_compute_dtype": resolve_compute_dtype(cfg.compute_dtype, device)}
    if vision:
        settings["llm_int8_skip_modules"] = ["lm_head", *VISION_TOWER_NAMES, *PROJECTOR_NAMES]
    return settings


@stage("qlora", config=QLoRAConfig, consumes={"model"}, produces="adapter",
       libraries=(*TRAINING_LIBRARIES, "bitsandbytes"), distributed=True)
def run(cfg: QLoRAConfig, inputs: Inputs, ctx: StageContext) -> Artifact:
    """Quantize the input model to 4 bits on load and train a LoRA adapter on it."""
    import torch
    from peft import prepare_model_for_kbit_training
    from transformers import BitsAndBytesConfig

    settings = quantization_settings(cfg, ctx.device, vision=is_vision(ctx.model, inputs.primary.model_under()))
    compute_dtype = getattr(torch, settings["bnb_4bit_compute_dtype"])
    quant = BitsAndBytesConfig(**{**settings, "bnb_4bit_compute_dtype": compute_dtype})
    optim = cfg.optim if cfg.optim != "auto" else ("paged_adamw_8bit" if ctx.device == "cuda" else "adamw_torch")

    def load_4bit():
        # each rank's 4-bit base on its own GPU (the worker sets the current device per LOCAL_RANK)
        place = torch.cuda.current_device() if ctx.device == "cuda" else "cpu"
        model = model_class(inputs.primary.path, ctx.model).from_pretrained(
            inputs.primary.path, quantization_config=quant, dtype=compute_dtype, device_map={"": place},
            trust_remote_code=ctx.model.trust_remote_code)
        return prepare_model_for_kbit_training(model, use_gradient_checkpointing=resolved_checkpointing(
            cfg.gradient_checkpointing, ctx.device, inputs.primary, ctx.model.params_b))

    ctx.log(f"4-bit {settings['bnb_4bit_quant_type']} base (double quant {cfg.double_quant}, compute "
            f"{settings['bnb_4bit_compute_dtype']}), optimizer {optim}")
    return train(dataclasses.replace(cfg, optim=optim), inputs, ctx, load_4bit,
                 meta={"quantized_base": settings, "optimizer": optim})
