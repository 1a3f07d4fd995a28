"""compressed-tensors exports with llm-compressor: the checkpoints vLLM's users ship.

    python main.py recipe=lora_merge +stage@stages.fp8=compressed                        # FP8 dynamic
    python main.py recipe=lora_merge +stage@stages.w4a16=compressed stages.w4a16.scheme=w4a16

    scheme        what llm-compressor does                                   calibration   vLLM runs it on
    fp8_dynamic   FP8 weights (per channel); activations FP8 per token       none          Ada/Hopper GPUs
    w4a16         4-bit weights, GPTQ (GPTQModifier)                          chats         GPUs (Marlin)
    awq_w4a16     AWQ scales (AWQModifier), then 4-bit weights (GPU only)     chats         GPUs (Marlin)
    w8a8          SmoothQuant, then int8 weights (GPTQ) and int8 activations  chats         GPUs

Calibration chats are the chain's own SFT data rendered with the chat template (as for GPTQ). The folder is
saved compressed, reloaded with a plain from_pretrained (transformers' compressed-tensors integration, which
needs the compressed-tensors package), and checked against its source by the parity check. On a CPU the
reloaded layers run in plain PyTorch from the stored low-bit weights and scales, which checks what the
quantization did to the answers; vLLM's fast kernels need a GPU (tests marked gpu).

llm-compressor 0.14 pins transformers <= 5.17; it was seen to quantize and save beside transformers 5.25
installed without its pins (INSTALL below)."""
from __future__ import annotations

import functools
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, List, Optional

from omegaconf import MISSING

from exports.common import calibration_batches, probe_texts, refuse_quantized_input, reload_check, size_metrics
from exports.parity import PARITY_PERCENT, ParityFields, compare_with_source
from pipeline.artifact import Artifact
from pipeline.data.datasets import DatasetSpec
from pipeline.engine.context import Inputs, StageContext
from pipeline.engine.registry import stage
from pipeline.errors import PlanError
from pipeline.models.loading import load_causal_lm, load_tokenizer, save_tokenizer
from pipeline.ranges import at_least, one_of, setting

SCHEMES = ("fp8_dynamic", "w4a16", "awq_w4a16", "w8a8")
CALIBRATED = ("w4a16", "awq_w4a16", "w8a8")
INSTALL = "pip install --no-deps llmcompressor==0.14.0.1 compressed-tensors==0.19.0 loguru"
BITS = {"fp8_dynamic": 8, "w4a16": 4, "awq_w4a16": 4, "w8a8": 8}


@dataclass
class CompressedConfig(ParityFields):
    kind: str = setting("compressed", "the stage kind")
    scheme: str = one_of("fp8_dynamic", SCHEMES, help="fp8_dynamic (no calibration) | w4a16 (GPTQ) | awq_w4a16 | "
                                                       "w8a8 (SmoothQuant + GPTQ, int8 activations)")
    ignore: List[str] = setting(factory=lambda: ["lm_head"], help="modules left in full precision")
    n_samples: int = at_least(1, 64, help="calibration chats (calibrated schemes)")
    max_seq_len: int = at_least(16, 512, help="tokens per calibration chat (longer ones are cut)")
    smoothing_strength: float = at_least(0, 0.8, help="w8a8: SmoothQuant's alpha")
    calibration: Optional[DatasetSpec] = setting(MISSING, "chats (messages records), rendered with the tokenizer's "
                                                          "chat template", purpose="sft")

    def disk_bytes(self, n_params: int, dtype: str) -> int:
        return int(n_params * BITS[self.scheme] / 8 * 1.1)  # weights plus scales

    def unused_datasets(self) -> set[str]:
        return set() if self.scheme in CALIBRATED else {"calibration"}

    def validate(self, where: str, earlier: dict) -> None:
        refuse_quantized_input(where, self.inputs, earlier)

    def check_device(self, where: str, device: str) -> None:
        if self.scheme == "awq_w4a16" and device != "cuda":
            raise PlanError(f"{where}.scheme: awq_w4a16 needs a GPU (llm-compressor 0.14's AWQ stops on a CPU: "
                            f"'Cannot access accelerator device'); on a CPU use w4a16 (GPTQ) instead")
        problem = llmcompressor_import_error()
        if problem:
            raise PlanError(f"{where}: kind compressed needs llm-compressor, which cannot be imported ({problem}); "
                            f"it pins transformers <= 5.17, so install it without its pins: {INSTALL}")


@functools.lru_cache(maxsize=None)
def llmcompressor_import_error() -> Optional[str]:
    try:
        import compressed_tensors  # noqa: F401
        import llmcompressor  # noqa: F401
    except Exception as e:  # noqa: BLE001  (a missing dependency shows up as any import-time error)
        return f"{type(e).__name__}: {str(e).strip().splitlines()[0][:200] if str(e).strip() else ''}"
    return None


def recipe(cfg: CompressedConfig) -> list:
    """llm-compressor's modifiers for the scheme."""
    from llmcompressor.modifiers.quantization import GPTQModifier, QuantizationModifier

    if cfg.scheme == "fp8_dynamic":
        return [QuantizationModifier(targets="Linear", scheme="FP8_DYNAMIC", ignore=list(cfg.ignore))]
    if cfg.scheme == "w4a16":
        return [GPTQModifier(targets="Linear", scheme="W4A16", ignore=list(cfg.ignore))]
    if cfg.scheme == "awq_w4a16":
        from llmcompressor.modifiers.awq import AWQModifier

        return [AWQModifier(targets="Linear", scheme="W4A16", ignore=list(cfg.ignore))]
    from llmcompressor.modifiers.smoothquant import SmoothQuantModifier

    return [SmoothQuantModifier(smoothing_strength=cfg.smoothing_strength),
            GPTQModifier(targets="Linear", scheme="W8A8", ignore=list(cfg.ignore))]


@stage("compressed", config=CompressedConfig, consumes={"model"}, produces="model",
       libraries=("torch", "transformers", "llmcompressor", "compressed-tensors"), isolated=True, variant=True,
       percent=PARITY_PERCENT)
def run(cfg: CompressedConfig, inputs: Inputs, ctx: StageContext) -> Artifact:
    """Quantize the input model with llm-compressor and save it in compressed-tensors format."""
    import datasets
    from importlib.metadata import version

    problem = llmcompressor_import_error()
    if problem:
        raise PlanError(f"stages.{ctx.name}: llm-compressor cannot be imported ({problem}); {INSTALL}")
    from llmcompressor import oneshot

    source = inputs.primary
    out_dir = Path(ctx.out_dir)
    tokenizer = load_tokenizer(source.tokenizer_dir(), ctx.model)
    model = load_causal_lm(source, ctx.model, ctx.device)
    calibration = calibration_batches(cfg, tokenizer, ctx.log) if cfg.scheme in CALIBRATED else []
    tokens = sum(len(b["input_ids"]) for b in calibration)
    ctx.log(f"llm-compressor {cfg.scheme}" + (f": {len(calibration)} calibration chats ({tokens} tokens)"
                                              if calibration else ": no calibration") + f" on {ctx.device}")
    started = time.time()
    oneshot(model=model, recipe=recipe(cfg), output_dir=None,
            **({"dataset": datasets.Dataset.from_list(calibration), "num_calibration_samples": len(calibration),
                "max_seq_length": cfg.max_seq_len} if calibration else {}))
    quantize_seconds = round(time.time() - started, 2)
    model.save_pretrained(str(out_dir), save_compressed=True)
    del model
    save_tokenizer(tokenizer, source, out_dir)
    saved = json.loads((out_dir / "config.json").read_text()).get("quantization_config") or {}
    if saved.get("quant_method") != "compressed-tensors":
        raise PlanError(f"{out_dir}: llm-compressor saved no 'quant_method: compressed-tensors' config ({saved})")
    reload = reload_check(out_dir, source, ctx, lambda m: hasattr(m, "quantization_scheme"),
                          "layers with a compressed-tensors quantization scheme", probe_texts(cfg, tokenizer))
    metrics: dict[str, Any] = {**size_metrics(source, out_dir), "quantize_seconds": quantize_seconds,
                               "calibration_samples": len(calibration), "calibration_tokens": tokens,
                               **{k: v for k, v in reload.items() if k != "reloaded_layers"}}
    exported = Artifact(kind="model", path=str(out_dir), fingerprint="", format=f"compressed-{cfg.scheme}",
                        base_model=source.base_model or source.path, stage=ctx.name)
    metrics.update(compare_with_source(cfg, source, exported, ctx))
    ctx.log(f"{cfg.scheme}: {metrics['size_mb']} MB (source {metrics['source_size_mb']} MB, "
            f"{metrics['compression_ratio']}x) in {quantize_seconds}s, reloaded from its folder alone, next-token "
            f"agreement with the source {reload['reload_top1_agreement']:.1%}")
    meta = {"quantization": {"method": "compressed-tensors", "scheme": cfg.scheme, "ignore": list(cfg.ignore),
                             "format": saved.get("format"), "config_groups": list(saved.get("config_groups") or {})},
            "quantizer": f"llmcompressor {version('llmcompressor')}, compressed-tensors {version('compressed-tensors')}",
            "reloaded_layers": reload["reloaded_layers"],
            "calibration": cfg.calibration.path if calibration else None, "source": source.path}
    return Artifact(kind="model", path=str(out_dir), fingerprint="", format=f"compressed-{cfg.scheme}",
                    base_model=source.base_model or source.path, metrics=metrics, meta=meta)
