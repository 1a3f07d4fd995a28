"""bitsandbytes export: a 4-bit (NF4/FP4) or LLM.int8 checkpoint that loads from its folder alone.

    python main.py recipe=lora_merge +stage@stages.quantize=bnb_nf4
    python main.py recipe=lora_merge +stage@stages.quantize=bnb_int8 stages.quantize.int8_threshold=4.0

The input model is quantized on load (transformers' BitsAndBytesConfig) and saved with
`save_pretrained`, which writes the packed weights and the quantization config into config.json.
The folder is then reloaded with a plain `AutoModelForCausalLM.from_pretrained(folder)` (no
quantization arguments) and run once, so what the store keeps is known to load as users load it;
the parity check compares its greedy outputs with the source's.

bitsandbytes >= 0.50 runs NF4, FP4 and LLM.int8 on CPU too (slowly; seen with 0.50.2). Whether the
installed version does is probed at plan time with a tiny layer of the requested mode, so a CPU
that cannot run it fails before any work starts, naming what runs there instead.
"""
from __future__ import annotations

import functools
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, List, Optional

from exports.common import probe_texts, refuse_quantized_input, reload_check, size_metrics
from exports.parity import PARITY_PERCENT, ParityFields, compare_with_source
from pipeline.artifact import Artifact
from pipeline.engine.context import Inputs, StageContext
from pipeline.engine.registry import stage
from pipeline.errors import ConfigError, PlanError
from pipeline.models.loading import is_vision, load_tokenizer, model_class, save_tokenizer
from pipeline.models.vision import PROJECTOR_NAMES, VISION_TOWER_NAMES
from pipeline.models.memory import BYTES_PER_PARAM, NF4_OVERHEAD
from pipeline.ranges import at_least, setting

MODES = ("nf4", "fp4", "int8")
COMPUTE_DTYPES = ("auto", "float32", "bfloat16", "float16")
INSTALL = "pip install -e '.[bnb]' (bitsandbytes>=0.50.2 runs on CPU too)"


@dataclass
class BnbConfig(ParityFields):
    kind: str = setting("bnb", "the stage kind")
    mode: str = setting("nf4", "nf4 | fp4 (4-bit) | int8 (LLM.int8)")
    double_quant: bool = setting(True, "4-bit: quantize the quantization constants too (~0.4 bit/param)")
    compute_dtype: str = setting("auto", "auto: bf16 on GPU (fp16 for int8), fp32 on CPU")
    int8_threshold: float = at_least(0, 6.0, help="int8: activations above this stay in 16 bit (LLM.int8 outliers)")
    skip_modules: Optional[List[str]] = setting(None, "modules kept unquantized; null: [lm_head]")

    def disk_bytes(self, n_params: int, dtype: str) -> int:
        per_param = 1.0 if self.mode == "int8" else BYTES_PER_PARAM["nf4"] * NF4_OVERHEAD
        return int(n_params * per_param)

    def validate(self, where: str, earlier: dict) -> None:
        if self.mode not in MODES:
            hint = f" (lower case: '{self.mode.lower()}')" if self.mode.lower() in MODES else ""
            raise ConfigError(f"{where}.mode: '{self.mode}'{hint}; valid: {', '.join(MODES)} "
                              f"(nf4/fp4: 4-bit, int8: LLM.int8)")
        if self.compute_dtype not in COMPUTE_DTYPES:
            raise ConfigError(f"{where}.compute_dtype: '{self.compute_dtype}'; valid: {', '.join(COMPUTE_DTYPES)}")
        refuse_quantized_input(where, self.inputs, earlier)

    def check_device(self, where: str, device: str) -> None:
        try:
            import bitsandbytes  # noqa: F401
        except ImportError as e:
            raise PlanError(f"{where}: kind bnb needs bitsandbytes, which is not installed: {INSTALL} [{e}]") from None
        if device != "cpu":
            return
        problem = cpu_probe(self.mode)
        if problem:
            from importlib.metadata import version

            raise PlanError(
                f"{where}: bitsandbytes {version('bitsandbytes')} cannot run mode '{self.mode}' on CPU ({problem}). "
                f"Run this stage on a GPU, install bitsandbytes>=0.50.2, or for CPU inference export with the gguf "
                f"stage instead (+stage@stages.gguf=gguf, quant q4_k_m or q8_0: llama.cpp runs those on CPU)")



@functools.lru_cache(maxsize=None)
def cpu_probe(mode: str) -> Optional[str]:
    """None if this bitsandbytes quantizes and multiplies with `mode` on CPU, else what failed.
    A 64x64 layer, once per process: ~0.1 s after bitsandbytes is imported."""
    import warnings

    import torch

    try:
        import bitsandbytes as bnb

        generator = torch.Generator().manual_seed(0)
        weight = torch.randn(64, 64, generator=generator) * 0.05
        x = torch.randn(3, 64, generator=generator)
        if mode == "int8":
            layer = bnb.nn.Linear8bitLt(64, 64, bias=False, has_fp16_weights=False, threshold=6.0)
        else:
            layer = bnb.nn.Linear4bit(64, 64, bias=False, compute_dtype=torch.float32, quant_type=mode)
        layer.weight.data = weight.clone()
        layer = layer.to("cpu")  # quantizes
        with warnings.catch_warnings(), _quiet_int8_cast():
            warnings.simplefilter("ignore")
            y = layer(x).float()
        reference = x @ weight.t()
        error = float((y - reference).norm() / reference.norm())
    except Exception as e:  # noqa: BLE001  (any failure means: not on this CPU)
        return f"{type(e).__name__}: {str(e).strip().splitlines()[0][:200] if str(e).strip() else ''}"
    if not error < 0.5:
        return f"a test matmul was wrong (relative error {error:.2f})"
    return None


class _OnceFilter(logging.Filter):
    """bitsandbytes logs 'MatMul8bitLt: inputs will be cast ... to float16' on every int8 matmul of
    fp32 inputs (each layer, each token); keep the first."""

    def __init__(self) -> None:
        super().__init__()
        self.seen = False

    def filter(self, record: logging.LogRecord) -> bool:
        if "MatMul8bitLt: inputs will be cast" not in record.getMessage():
            return True
        first, self.seen = not self.seen, True
        return first


class _quiet_int8_cast:
    def __enter__(self):
        self.logger = logging.getLogger("bitsandbytes.autograd._functions")
        self.filter = _OnceFilter()
        self.logger.addFilter(self.filter)
        return self

    def __exit__(self, *exc):
        self.logger.removeFilter(self.filter)
        return False


def resolve_compute_dtype(cfg: BnbConfig, device: str) -> str:
    if cfg.compute_dtype != "auto":
        return cfg.compute_dtype
    if device != "cuda":
        return "float32"  # bf16 4-bit matmuls measured 6x slower than fp32 on a 2-core CPU
    import torch

    if cfg.mode == "int8":
        return "float16"  # LLM.int8 casts its inputs to fp16 anyway
    return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"


def quantization_settings(cfg: BnbConfig, device: str, vision: bool = False) -> dict[str, Any]:
    """BitsAndBytesConfig's arguments (dtype as a name), as the manifest records them. A vision-language model
    keeps its image encoder and projector unquantized by default, as the output layer (small, and sensitive)."""
    default_skip = ["lm_head", *VISION_TOWER_NAMES, *PROJECTOR_NAMES] if vision else ["lm_head"]
    skip = list(cfg.skip_modules) if cfg.skip_modules is not None else default_skip
    if cfg.mode == "int8":
        return {"load_in_8bit": True, "llm_int8_threshold": cfg.int8_threshold, "llm_int8_skip_modules": skip}
    return {"load_in_4bit": True, "bnb_4bit_quant_type": cfg.mode, "bnb_4bit_use_double_quant": cfg.double_quant,
            "bnb_4bit_compute_dtype": resolve_compute_dtype(cfg, device), "llm_int8_skip_modules": skip}


@stage("bnb", config=BnbConfig, consumes={"model"}, produces="model",
       libraries=("torch", "transformers", "bitsandbytes"), isolated=True, variant=True,
       percent=PARITY_PERCENT)
def run(cfg: BnbConfig, inputs: Inputs, ctx: StageContext) -> Artifact:
    """Quantize the input model with bitsandbytes (NF4/FP4 4-bit or LLM.int8) and save it."""
    import torch
    from transformers import BitsAndBytesConfig

    source = inputs.primary
    settings = quantization_settings(cfg, ctx.device, vision=is_vision(ctx.model, source.model_under()))
    dtype = getattr(torch, resolve_compute_dtype(cfg, ctx.device))
    quant = BitsAndBytesConfig(**{k: (getattr(torch, v) if k == "bnb_4bit_compute_dtype" else v)
                                  for k, v in settings.items()})
    started = time.time()
    revision = ctx.model.revision if source.path == ctx.model.path else None
    model = model_class(source.path, ctx.model).from_pretrained(
        source.path, revision=revision, quantization_config=quant, dtype=dtype,
        device_map={"": 0} if ctx.device == "cuda" else {"": "cpu"}, trust_remote_code=ctx.model.trust_remote_code)
    out_dir = Path(ctx.out_dir)
    model.save_pretrained(str(out_dir), safe_serialization=True)  # also writes generation_config.json
    del model
    tokenizer = load_tokenizer(source.tokenizer_dir(), ctx.model)
    save_tokenizer(tokenizer, source, out_dir)
    quantize_seconds = round(time.time() - started, 2)

    saved = json.loads((out_dir / "config.json").read_text()).get("quantization_config")
    if not saved:
        raise PlanError(f"{out_dir}: save_pretrained wrote no quantization_config into config.json")
    layer_class = "Linear8bitLt" if cfg.mode == "int8" else "Linear4bit"
    with _quiet_int8_cast():
        reload = reload_check(out_dir, source, ctx, lambda m: type(m).__name__ == layer_class, layer_class,
                              probe_texts(cfg, tokenizer))
    metrics: dict[str, Any] = {**size_metrics(source, out_dir), "quantize_seconds": quantize_seconds,
                               **{k: v for k, v in reload.items() if k != "reloaded_layers"}}
    exported = Artifact(kind="model", path=str(out_dir), fingerprint="", format=f"bnb-{cfg.mode}",
                        base_model=source.base_model or source.path, stage=ctx.name)
    with _quiet_int8_cast():
        metrics.update(compare_with_source(cfg, source, exported, ctx))
    ctx.log(f"bnb {cfg.mode}: {metrics['size_mb']} MB (source {metrics['source_size_mb']} MB, "
            f"{metrics['compression_ratio']}x), reloaded from its folder alone ({', '.join(reload['reloaded_layers'])}), "
            f"next-token agreement with the source {reload['reload_top1_agreement']:.1%}")
    return Artifact(kind="model", path=str(out_dir), fingerprint="", format=f"bnb-{cfg.mode}",
                    base_model=source.base_model or source.path, metrics=metrics,
                    meta={"quantization": settings, "quantization_config": saved,
                          "reloaded_layers": reload["reloaded_layers"], "source": source.path})
