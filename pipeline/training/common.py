"""What every trainer-based stage shares: LoRA settings, trainer arguments per device and
hardware profile, saving what a trainer trained, and reading the loss curve back from a trainer."""
from __future__ import annotations

import copy
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, List, Optional

from pipeline.artifact import Artifact, ArtifactKind
from pipeline.errors import ConfigError, PlanError
from pipeline.models.experts import expert_count, fused_expert_parameters
from pipeline.models.loading import local_folder, model_type, module_names, read_config, unmatched_targets
from pipeline.models.memory import checkpointing_by_default, count_parameters
from pipeline.models.vision import lora_target_pattern, projector_modules
from pipeline.ranges import at_least, between, positive, setting

# transformers' SchedulerType values (tests/test_ranges.py keeps them in step)
SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup",
              "inverse_sqrt", "reduce_lr_on_plateau", "cosine_with_min_lr", "cosine_warmup_with_min_lr",
              "warmup_stable_decay", "greedy")


@dataclass
class LoraSpec:
    r: int = at_least(1, 16, help="LoRA rank")
    alpha: int = positive(32, help="LoRA scaling numerator (scale = alpha / r)")
    dropout: float = between(0.0, 0, 1, high_open=True, help="dropout on the LoRA path")
    target_modules: Optional[List[str]] = setting(None, "null: the model config's lora_target_modules")
    use_dora: bool = setting(False, "DoRA: weight-decomposed LoRA")
    use_rslora: bool = setting(False, "rank-stabilized scale alpha / sqrt(r)")
    experts: bool = setting(False, "mixture-of-experts models: LoRA on the fused expert weights too (peft "
                                   "target_parameters); false: the experts stay frozen, attention and router train")

    def check_family(self, where: str, folder: Path | None) -> None:
        """Targets that match no module of the model, and `experts: true` without fused expert weights or a
        peft that reaches them, are refused at plan time."""
        unmatched = unmatched_targets(folder, list(self.target_modules or []))
        if unmatched:
            raise ConfigError(f"{where}.target_modules: {unmatched} match no module of {folder} (peft matches a "
                              f"module name or its last parts, e.g. q_proj); its layers' modules: "
                              f"{', '.join(projection_names(folder)) or 'none found'}")
        if not self.experts:
            return
        from peft import LoraConfig

        if "target_parameters" not in LoraConfig.__dataclass_fields__:
            raise PlanError(f"{where}.experts: true needs peft's target_parameters (peft >= 0.17): "
                            f"pip install -U peft, or set {where}.experts: false")
        config = read_config(folder) if folder is not None else None
        if config is not None and not expert_count(config):
            architecture = (config.get("architectures") or [config.get("model_type", "?")])[0]
            raise ConfigError(f"{where}.experts: true, but {architecture} has no experts (a dense model); "
                              f"drop it or use a mixture-of-experts model")


def projection_names(folder: Path | None) -> list[str]:
    """The distinct last parts of a model's module names under its layers (what target_modules can name)."""
    if folder is None:
        return []
    return sorted({name.rsplit(".", 1)[-1] for name in module_names(folder) if ".layers." in name
                   and not name.rsplit(".", 1)[-1].isdigit()})


def lora_config(spec: LoraSpec, default_targets: list[str], vision_model=None, vision=None, model=None,
                log=print):
    """peft's LoraConfig; for a vision-language model (`vision_model`), the targets are matched in its language
    model only (and its vision encoder where `vision.tune_vision_tower`), and the projector trains whole where
    `vision.tune_projector`. A mixture-of-experts `model`'s fused expert weights are added where `spec.experts`
    (else the log says they stay frozen)."""
    from peft import LoraConfig

    targets = list(spec.target_modules or default_targets)
    extra = {}
    if vision_model is not None:
        extra["target_modules"] = lora_target_pattern(vision_model, targets, vision.tune_vision_tower)
        if vision.tune_projector:
            extra["modules_to_save"] = projector_modules(vision_model)
    else:
        extra["target_modules"] = "all-linear" if targets == ["all-linear"] else targets
    experts = fused_expert_parameters(model) if model is not None else []
    if spec.experts and not experts:
        raise ConfigError(f"lora.experts: true, but {type(model).__name__} has no fused expert weights to adapt")
    if spec.experts:
        extra["target_parameters"] = experts
        log(f"LoRA on the experts too: {', '.join(experts)} (lora.experts: true)")
    elif experts:
        log(f"LoRA leaves the experts frozen ({', '.join(experts)}); lora.experts: true adapts them too")
    return LoraConfig(r=spec.r, lora_alpha=spec.alpha, lora_dropout=spec.dropout, task_type="CAUSAL_LM",
                      use_dora=spec.use_dora, use_rslora=spec.use_rslora, **extra)


def device_args(device: str, hardware: dict[str, Any], gradient_checkpointing: bool | None,
                source=None, params_b: float | None = None) -> dict[str, Any]:
    """Trainer arguments that follow from the device and the hardware profile; gradient checkpointing left
    null is decided by the device and the size of the `source` artifact's model (memory.checkpointing_by_default)."""
    import torch

    on_gpu = device == "cuda"
    bf16 = on_gpu and torch.cuda.is_bf16_supported()
    args: dict[str, Any] = {
        "use_cpu": not on_gpu,
        "bf16": bf16,
        "fp16": on_gpu and not bf16,
        "activation_checkpointing": resolved_checkpointing(gradient_checkpointing, device, source, params_b),
        "report_to": "none",  # tracking goes through pipeline.engine.tracking (one W&B run per chain)
        "dataloader_num_workers": 0,
    }
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # a torchrun rank (pipeline.engine.launch)
        # every LoRA / full-model parameter takes part in the loss: skip DDP's extra graph traversal
        args["ddp_find_unused_parameters"] = bool(hardware.get("find_unused_parameters", False))
    if hardware.get("deepspeed"):
        args["deepspeed"] = deepspeed_config(hardware)
    if hardware.get("fsdp"):
        args["fsdp"] = hardware["fsdp"]
        args["fsdp_config"] = hardware.get("fsdp_config") or {}
    return args


def resolved_checkpointing(setting: bool | None, device: str, source=None, params_b: float | None = None) -> bool:
    """A null setting by the model's size: counted from a local folder's weights, else model.params_b (hub ids)."""
    if setting is not None:
        return bool(setting)
    folder = local_folder(source.model_under()) if source else None
    n_params = count_parameters(folder) if folder else None
    return checkpointing_by_default(device, n_params or int((params_b or 0) * 1e9))


# Families whose attention builds its mask with transformers' masking_utils, which keeps the sequences of one
# padding-free (or packed) row apart by their position ids: measured per family by tests/test_families.py
# (not qwen3_5, whose linear-attention state runs across the row, nor gpt_oss).
PADDING_FREE_FAMILIES = ("llama", "mistral", "qwen2", "qwen3", "qwen3_moe", "gemma2", "gemma3_text", "gemma4_text",
                         "phi3", "phimoe", "olmo2", "granite", "smollm3")


def speed_args(cfg, device: str, source) -> dict[str, Any]:
    """trl's throughput switches for a stage config with packing / padding_free / liger / torch_compile.
    padding_free left null: on for the families above (no pad tokens computed: 1.17x tokens/s and 14% less
    RSS on the embedded model at batch 16, the same loss); liger left null: on with CUDA where liger-kernel
    is installed (its Triton kernels need a GPU)."""
    padding_free = cfg.padding_free
    if padding_free is None:
        padding_free = model_type(source.model_under()) in PADDING_FREE_FAMILIES
    liger = cfg.liger if cfg.liger is not None else (device == "cuda" and importlib.util.find_spec("liger_kernel") is not None)
    return {"packing": cfg.packing, "padding_free": bool(padding_free) and not cfg.packing,
            "use_liger_kernel": bool(liger), "torch_compile": cfg.torch_compile}


def deepspeed_config(hardware: dict[str, Any]) -> dict[str, Any]:
    """The profile's DeepSpeed config with its offload switches written in (DeepSpeed's own keys)."""
    config = copy.deepcopy(dict(hardware["deepspeed"]))
    zero = config.setdefault("zero_optimization", {})
    for switch in ("offload_optimizer", "offload_param"):
        if hardware.get(switch):
            zero[switch] = {"device": "cpu", "pin_memory": True}
    return config


def rank_share(model) -> dict[str, float]:
    """Under ZeRO-3 (weights created by zero.Init) the fraction of the parameters this rank holds,
    which shows the model was never whole on one device; {} when parameters are not partitioned."""
    params = [p for p in model.parameters() if hasattr(p, "ds_numel")]
    if not params:
        return {}
    held = sum(p.ds_tensor.numel() for p in params)
    return {"rank_param_share": round(held / max(1, sum(p.ds_numel for p in params)), 4)}


def loss_curve(log_history: list[dict[str, Any]], keys: tuple[str, ...] = ("loss",)) -> dict[str, float]:
    """First and last logged value of each key (`loss_first`, `loss_last`, ...), so a stage shows it learned;
    a mixture-of-experts model's load-balancing loss (trl's `aux_loss`, on in training) too, where logged."""
    found = {}
    for key in (*keys, "aux_loss"):
        values = [row[key] for row in log_history if key in row]
        if values:
            found[f"{key}_first"], found[f"{key}_last"] = float(values[0]), float(values[-1])
    return found


def save_policy(trainer, out_dir: Path, lora: bool) -> None:
    """Save what an RL/preference trainer trained: for LoRA only the "default" adapter, not the
    frozen "ref" copy that trl adds when it continues an input adapter. Every rank calls it: the
    state dict is gathered from all of them under ZeRO-3 / FSDP, and rank 0 writes it."""
    state = trainer.accelerator.get_state_dict(trainer.model_wrapped)  # the DeepSpeed engine, if any
    if not trainer.is_world_process_zero():
        return
    trained = trainer.accelerator.unwrap_model(trainer.model)
    if lora:
        trained.save_pretrained(str(out_dir), state_dict=state, selected_adapters=["default"])
    else:
        trained.save_pretrained(str(out_dir), state_dict=state)


def policy_artifact(source: Artifact, out_dir: Path, full: bool, new_lora, metrics: dict, meta: dict) -> Artifact:
    """The artifact of a stage that trained `source` (a model, or an adapter it continued)."""
    if full:
        return Artifact(kind=ArtifactKind.model, path=str(out_dir), fingerprint="", format="hf",
                        base_model=source.base_model, metrics=metrics, meta=meta)
    adapter_base = source.model_under()
    lora = {"r": new_lora.r, "alpha": new_lora.alpha} if new_lora is not None else source.meta.get("lora")
    return Artifact(kind=ArtifactKind.adapter, path=str(out_dir), fingerprint="", format="peft-lora",
                    base_model=adapter_base, metrics=metrics, meta={"lora": lora, **meta})

