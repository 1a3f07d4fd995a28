"""GPTQ export (W4A16 / W8A16) with GPTQModel, calibrated on the chain's own training data.

    python main.py recipe=lora_merge +stage@stages.gptq=gptq
    python main.py recipe=lora_merge +stage@stages.gptq=gptq stages.gptq.bits=8 stages.gptq.n_samples=256

Calibration texts are the chain's SFT chats (`calibration: ${data.sft}`) rendered with the
tokenizer's chat template, so the Hessians GPTQ uses see the format the model will be asked in.
GPTQModel writes its `quant_method: gptq` checkpoint (packed int32 weights, scales, zeros) with the
tokenizer; the folder is then reloaded with a plain `AutoModelForCausalLM.from_pretrained(folder)`
(transformers' GPTQ integration, which needs gptqmodel installed to run) and compared with its
source by the parity check.

Installing GPTQModel: on a GPU with a current torch, `pip install -e '.[gptq]'`. gptqmodel 7.7.0
asks for torch >= 2.14.1 (a CUDA build); beside the CPU torch 2.13 it was installed without its
dependency pins (INSTALL_CPU below) and ran on CPU with GPTQMODEL_CPU_WORKERS >= 2.
llmcompressor is not offered: it pins transformers <= 5.17 and cannot share this environment.
"""
from __future__ import annotations

import csv
import functools
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from omegaconf import MISSING

from exports.common import calibration_batches, probe_texts, refuse_quantized_input, reload_check, size_metrics
from exports.parity import PARITY_PERCENT, ParityFields, compare_with_source
from pipeline.artifact import Artifact
from pipeline.data.datasets import DatasetSpec
from pipeline.engine.context import Inputs, StageContext
from pipeline.engine.registry import stage
from pipeline.errors import ConfigError, PlanError
from pipeline.models.loading import load_tokenizer, local_folder, save_tokenizer
from pipeline.ranges import at_least, between, one_of, setting

BITS = (4, 8)
BACKENDS = ("gptqmodel",)
INSTALL_GPU = "pip install -e '.[gptq]'"
# Seen to work beside torch 2.13.0+cpu and transformers 5.23 (2026-11-23): gptqmodel without its
# torch pin, then the packages `import gptqmodel` needs that the project does not already bring.
# Left out: ninja and maturin (build tools), and torchao (only GPTQModel's FP4/NVFP4 and rotation
# paths use it; once installed, transformers imports it in every process and prints load errors).
CPU_DEPS = ("threadpoolctl>=3.7.0", "device-smi>=0.5.7", "pillow>=13.0.0", "pypcre>=0.6.4", "tokenicer>=0.0.14",
            "logbar>=0.4.15", "defuser>=0.0.28", "optimum>=1.24")  # optimum: peft will not import without it
INSTALL_CPU = ("pip install --no-deps gptqmodel==7.7.0 && pip install "
               + " ".join(f"'{d}'" for d in CPU_DEPS))
MIN_CPU_WORKERS = 2  # GPTQModel's default on a 2-core machine is 1 worker, which fails there


@dataclass
class GPTQConfig(ParityFields):
    kind: str = setting("gptq", "the stage kind")
    bits: int = one_of(4, BITS, help="4: W4A16 | 8: W8A16 (weights quantized, activations 16 bit)")
    group_size: int = at_least(1, 128, also=(-1,), help="input columns sharing one scale/zero (-1: one group per row)")
    damp_percent: float = between(0.01, 0, 1, low_open=True, high_open=True,
                                  help="Hessian dampening, a fraction of its mean diagonal (GPTQModel's name)")
    desc_act: bool = setting(False, "quantize columns in order of activation size (\"act-order\")")
    n_samples: int = at_least(1, 128, help="calibration chats")
    max_seq_len: int = at_least(16, 512, help="tokens per calibration chat (longer ones are cut)")
    calibration: DatasetSpec = setting(MISSING, "chats (messages records), rendered with the tokenizer's chat template", purpose="sft")
    backend: str = setting("gptqmodel", "gptqmodel (the library that quantizes)")
    model_path: Optional[str] = setting(MISSING, "the chain's model (yaml: ${model.path}): its layer sizes are checked")
                                           # against group_size at plan time

    def disk_bytes(self, n_params: int, dtype: str) -> int:
        return int(n_params * self.bits / 8 * 1.1)  # packed weights plus scales and zero points

    def validate(self, where: str, earlier: dict) -> None:
        if self.backend not in BACKENDS:
            raise ConfigError(f"{where}.backend: '{self.backend}'; valid: {', '.join(BACKENDS)} (llmcompressor pins "
                              f"transformers <= 5.17 and cannot share this environment)")
        refuse_quantized_input(where, self.inputs, earlier)
        if self.model_path:
            config = read_model_config(self.model_path)
            if config is not None:
                check_group_size(where, self.group_size, config, self.model_path)

    def check_device(self, where: str, device: str) -> None:
        problem = gptqmodel_import_error()
        if problem:
            raise PlanError(f"{where}: kind gptq needs gptqmodel, which cannot be imported ({problem}). "
                            f"GPU: {INSTALL_GPU}. CPU with torch 2.13 (gptqmodel 7.7.0 asks for torch >= 2.14.1, a "
                            f"CUDA build): {INSTALL_CPU}")



@functools.lru_cache(maxsize=None)
def gptqmodel_import_error() -> Optional[str]:
    """None if gptqmodel imports, else why not (imported once: ~10 s, a banner)."""
    if os.environ.get("GPTQMODEL_CPU_WORKERS") is None:
        os.environ["GPTQMODEL_CPU_WORKERS"] = str(max(MIN_CPU_WORKERS, (os.cpu_count() or 2) // 2))
    try:
        import gptqmodel  # noqa: F401
    except Exception as e:  # noqa: BLE001  (a missing dependency shows up as any import-time error)
        return f"{type(e).__name__}: {str(e).strip().splitlines()[0][:200] if str(e).strip() else ''}"
    return None


def read_model_config(path: str) -> Optional[dict]:
    """config.json of a local folder or a cached hub model; None when it cannot be read offline."""
    folder = local_folder(path)
    if folder is not None:
        file = folder / "config.json"
        return json.loads(file.read_text()) if file.is_file() else None
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(path, "config.json")
    except Exception:  # noqa: BLE001
        return None
    return json.loads(Path(cached).read_text()) if isinstance(cached, str) else None


def linear_in_features(config: dict) -> dict[str, int]:
    """The input sizes of a decoder's linear layers, by where they come from in config.json."""
    config = config.get("text_config") or config
    hidden = config.get("hidden_size")
    heads = config.get("num_attention_heads")
    head_dim = config.get("head_dim") or (hidden // heads if hidden and heads else None)
    sizes = {"hidden_size": hidden, "num_attention_heads*head_dim": heads * head_dim if heads and head_dim else None,
             "intermediate_size": config.get("intermediate_size"),
             "moe_intermediate_size": config.get("moe_intermediate_size"),
             "shared_expert_intermediate_size": config.get("shared_expert_intermediate_size")}
    return {k: int(v) for k, v in sizes.items() if isinstance(v, int) and v > 0}


def check_group_size(where: str, group_size: int, config: dict, source: str) -> None:
    if group_size == -1:
        return
    bad = {k: v for k, v in linear_in_features(config).items() if v % group_size}
    if bad:
        sizes = ", ".join(f"{k} {v}" for k, v in bad.items())
        divisors = [g for g in (32, 64, 128) if all(v % g == 0 for v in linear_in_features(config).values())]
        hint = f"; {', '.join(map(str, divisors))} divide every layer" if divisors else ""
        raise ConfigError(f"{where}.group_size: {group_size} does not divide the input size of every linear layer "
                          f"of {source} ({sizes}); use a divisor of all of them or -1 (one group per row){hint}")


def quant_log_metrics(folder: Path) -> dict[str, float]:
    """GPTQModel's per-module reconstruction losses (quant_log.csv): mean and worst."""
    file = folder / "quant_log.csv"
    if not file.is_file():
        return {}
    with open(file) as handle:
        losses = [float(row["loss"]) for row in csv.DictReader(handle) if row.get("loss") not in (None, "")]
    if not losses:
        return {}
    return {"gptq_loss_mean": round(sum(losses) / len(losses), 6), "gptq_loss_max": round(max(losses), 6),
            "gptq_modules": len(losses)}


@stage("gptq", config=GPTQConfig, consumes={"model"}, produces="model",
       libraries=("torch", "transformers", "gptqmodel"), isolated=True, variant=True,
       percent=PARITY_PERCENT)
def run(cfg: GPTQConfig, inputs: Inputs, ctx: StageContext) -> Artifact:
    """Quantize the input model's linear layers with GPTQ (GPTQModel) on the chain's chats and save it."""
    import gc

    from transformers import GenerationConfig

    problem = gptqmodel_import_error()  # sets GPTQMODEL_CPU_WORKERS before the import
    if problem:
        raise PlanError(f"stages.{ctx.name}: gptqmodel cannot be imported ({problem}); GPU: {INSTALL_GPU}; "
                        f"CPU: {INSTALL_CPU}")
    from gptqmodel import GPTQModel, QuantizeConfig

    source = inputs.primary
    config = read_model_config(source.path)
    if config is not None:
        check_group_size(f"stages.{ctx.name}", cfg.group_size, config, source.path)
    out_dir = Path(ctx.out_dir)
    tokenizer = load_tokenizer(source.tokenizer_dir(), ctx.model)
    calibration = calibration_batches(cfg, tokenizer, ctx.log)
    tokens = sum(len(b["input_ids"]) for b in calibration)
    ctx.log(f"GPTQ W{cfg.bits}A16, group size {cfg.group_size}, damp {cfg.damp_percent}, desc_act {cfg.desc_act}: "
            f"{len(calibration)} calibration chats ({tokens} tokens) on {ctx.device}")

    quantize_config = QuantizeConfig(bits=cfg.bits, group_size=cfg.group_size, damp_percent=cfg.damp_percent,
                                     desc_act=cfg.desc_act, offload_to_disk=False)
    started = time.time()
    model = GPTQModel.load(source.path, quantize_config, device="cuda:0" if ctx.device == "cuda" else "cpu",
                           trust_remote_code=ctx.model.trust_remote_code)
    _keep_logs_in(out_dir / "gptq_logs")
    model.quantize(calibration, batch_size=1, tokenizer=tokenizer)
    quantize_seconds = round(time.time() - started, 2)
    model.save(str(out_dir))
    del model
    gc.collect()
    # GPTQModel writes its own tokenizer files and a generation config of its making: keep the source's.
    save_tokenizer(tokenizer, source, out_dir)
    try:
        GenerationConfig.from_pretrained(source.path).save_pretrained(str(out_dir))
    except OSError:
        pass  # the source has none

    saved = json.loads((out_dir / "config.json").read_text()).get("quantization_config") or {}
    if saved.get("quant_method") != "gptq":
        raise PlanError(f"{out_dir}: GPTQModel saved no 'quant_method: gptq' quantization config ({saved})")
    reload = reload_check(out_dir, source, ctx, lambda m: hasattr(m, "qweight"), "GPTQ layers with a qweight",
                          probe_texts(cfg, tokenizer))
    metrics: dict[str, Any] = {**size_metrics(source, out_dir), "quantize_seconds": quantize_seconds,
                               "calibration_samples": len(calibration), "calibration_tokens": tokens,
                               **quant_log_metrics(out_dir), **{k: v for k, v in reload.items() if k != "reloaded_layers"}}
    scheme = f"w{cfg.bits}a16"
    exported = Artifact(kind="model", path=str(out_dir), fingerprint="", format=f"gptq-{scheme}",
                        base_model=source.base_model or source.path, stage=ctx.name)
    metrics.update(compare_with_source(cfg, source, exported, ctx))
    ctx.log(f"GPTQ {scheme}: {metrics['size_mb']} MB (source {metrics['source_size_mb']} MB, "
            f"{metrics['compression_ratio']}x) in {quantize_seconds}s, reloaded from its folder alone "
            f"({', '.join(reload['reloaded_layers'])}), next-token agreement with the source "
            f"{reload['reload_top1_agreement']:.1%}")
    from importlib.metadata import version

    meta = {"quantization": {"method": "gptq", "bits": cfg.bits, "group_size": cfg.group_size,
                             "damp_percent": cfg.damp_percent, "desc_act": cfg.desc_act, "sym": saved.get("sym"),
                             "checkpoint_format": saved.get("checkpoint_format") or saved.get("format")},
            "quantizer": f"gptqmodel {version('gptqmodel')}", "reloaded_layers": reload["reloaded_layers"],
            "calibration": cfg.calibration.path, "source": source.path}
    return Artifact(kind="model", path=str(out_dir), fingerprint="", format=f"gptq-{scheme}",
                    base_model=source.base_model or source.path, metrics=metrics, meta=meta)


def _keep_logs_in(folder: Path) -> None:
    """GPTQModel 7.7 writes per-layer logs to ./logs of the working folder; keep them with the artifact."""
    try:
        from gptqmodel.looper import loop_processor
    except ImportError:
        return
    if hasattr(loop_processor, "_PROJECT_LOG_DIR"):
        folder.mkdir(parents=True, exist_ok=True)
        loop_processor._PROJECT_LOG_DIR = folder
