"""Export to GGUF for llama.cpp and Ollama, with the stop tokens and chat template checked.

    python main.py recipe=lora_merge +stage@stages.gguf=gguf stages.gguf.quant=q4_k_m

An adapter input is merged into its base first. llama.cpp's own converter (from the sdist of the
installed llama-cpp-python, see pipeline/llama_cpp/converter.py) writes the target type directly when it can
(f32, f16, bf16, q8_0); other types are quantized from an f32/f16/bf16 file. The result is then
read back through llama.cpp and compared with the HF folder: chat template, eos id, add_bos, and
every generation_config eos id must end generation in llama.cpp. A missing or different value is
rewritten into the file (gguf-py, as its gguf_new_metadata script does); what cannot be fixed fails
the stage, because a GGUF that never emits a stop token runs on forever in llama.cpp and Ollama.
"""
from __future__ import annotations

import json
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.llama_cpp import converter, modelfile
from exports.common import QUANTIZED_KINDS
from pipeline.llama_cpp.gguf_metadata import converter_folder, hf_expectations, verify_and_fix
from exports.merge import merge_adapter
from exports.parity import PARITY_PERCENT, ParityFields, compare_with_source
from pipeline.artifact import MMPROJ, Artifact, ArtifactKind, weight_bytes
from pipeline.ranges import setting
from pipeline.engine.context import Inputs, StageContext
from pipeline.engine.registry import stage
from pipeline.errors import ConfigError, PlanError
from pipeline.models.loading import local_folder, read_config
from pipeline.models.vision import folder_is_vision
from pipeline.models.memory import GGUF_BYTES_PER_PARAM

MODEL_KINDS = (ArtifactKind.model, ArtifactKind.adapter)


@dataclass
class GGUFConfig(ParityFields):
    kind: str = setting("gguf", "the stage kind")
    quant: str = setting("q8_0", "one of pipeline.llama_cpp.converter.QUANT_TYPES")
    modelfile: bool = setting(True, "write an Ollama Modelfile beside the .gguf")
    keep_intermediate: bool = setting(False, "keep the f32/f16/bf16 GGUF a quantized type is made from")

    def disk_bytes(self, n_params: int, dtype: str) -> int:
        """The .gguf, plus the lossless GGUF a quantized type is made from (removed after, unless kept)."""
        lossless = {"f32": 4.0, "f16": 2.0, "bf16": 2.0}
        made_from = 0.0 if self.quant in lossless else lossless[intermediate_type(dtype)]
        return int(n_params * (GGUF_BYTES_PER_PARAM.get(self.quant, 2.0) + made_from))

    def validate(self, where: str, earlier: dict) -> None:
        if self.quant not in converter.QUANT_TYPES:
            hint = f" (lower case: '{self.quant.lower()}')" if self.quant.lower() in converter.QUANT_TYPES else ""
            raise ConfigError(f"{where}.quant: unknown GGUF type '{self.quant}'{hint}; valid: "
                              f"{', '.join(converter.QUANT_TYPES)}")
        source = self._input_step(earlier)
        if source is not None and source.kind.startswith(QUANTIZED_KINDS):
            before = source.input_names[0] if getattr(source, "input_names", None) else "base"
            raise ConfigError(
                f"{where}.inputs: '{source.name}' is a {source.kind} checkpoint, and llama.cpp's converter cannot "
                f"read {source.kind}-quantized weights. Export the unquantized model instead, with "
                f"`inputs: [{before}]` ({source.name}'s own input), and let llama.cpp quantize it "
                f"(quant: q4_k_m, q8_0, ...)")

    def _input_step(self, earlier: dict):
        """The step this stage reads (None: the base model), by the planner's rule."""
        if self.inputs:
            return earlier.get(self.inputs[0])
        return next((s for s in reversed(list(earlier.values())) if s.output_kind in MODEL_KINDS), None)

    def check_family(self, where: str, folder: Path | None) -> None:
        """What this llama.cpp cannot convert or load is refused here, before any training: a language model's
        architecture it does not know (or knows only in another layout), and a vision-language model without
        both halves (its language model and its image projector, mmproj)."""
        config = read_config(folder)
        if config is None:
            return
        try:
            problem = mmproj_problem(config) if folder_is_vision(folder) else text_problem(config)
            problem = problem or tokenizer_problem(folder)
        except (ImportError, PlanError):  # no llama.cpp (or converter) here: check_device names the install line
            return
        if problem:
            raise PlanError(f"{where}: {problem}; keep this model in HF form (merge) or quantize it with "
                            f"bitsandbytes (bnb_nf4) instead")

    def check_device(self, where: str, device: str) -> None:
        try:
            import llama_cpp  # noqa: F401
        except ImportError as e:
            raise PlanError(f"{where}: GGUF export needs llama-cpp-python: pip install -e '.[gguf]' "
                            f"(it compiles llama.cpp: 7-13 minutes on 2 cores, once) [{e}]") from None
        try:
            converter.converter_dir()
        except PlanError as e:
            raise PlanError(f"{where}: {e}") from None



# Seen here (tests/test_vlm_chain.py converts a tiny copy of each architecture): what the converter's registry
# lists but cannot convert, per bindings version.
KNOWN_MMPROJ_FAILURES = {
    ("Gemma3ForConditionalGeneration", "0.3.36"):
        "transformers 5 saves the SigLIP encoder as vision_tower.embeddings.*, which it does not map "
        "('Can not map tensor vision_tower.embeddings.patch_embedding.bias')",
}


# Seen here (tests/test_families.py): architectures whose llama.cpp loader wants a separate output.weight, so a
# copy built with tied embeddings converts and then does not load (their released models are untied).
UNTIED_ONLY = ("GptOssForCausalLM", "Olmo2ForCausalLM")


# Seen here (tests/test_families.py): how llama.cpp weighs the routed experts, per architecture. A config that
# routes otherwise converts and loads, but the GGUF computes another model (Qwen3-MoE with norm_topk_prob: false:
# logits off by 0.1, against 0.001 with true, as its released models have).
LLAMA_CPP_NORMALIZES_TOP_K = {"Qwen3MoeForCausalLM": True}


def text_problem(config: dict) -> str | None:
    """Why this llama.cpp cannot convert or load a language model of this config, or None."""
    architecture = (config.get("architectures") or ["?"])[0]
    version = converter.bindings_version()
    if architecture not in converter.architectures(mmproj=False):
        return f"llama.cpp {version}'s converter has no {architecture} (a newer llama-cpp-python may)"
    normalizes = LLAMA_CPP_NORMALIZES_TOP_K.get(architecture)
    if normalizes is not None and bool(config.get("norm_topk_prob")) != normalizes:
        return (f"llama.cpp {version} {'always' if normalizes else 'never'} renormalizes {architecture}'s routed "
                f"expert weights and this config has norm_topk_prob: {str(bool(config.get('norm_topk_prob'))).lower()}, "
                f"so the GGUF would compute another model")
    if architecture in UNTIED_ONLY and config.get("tie_word_embeddings"):
        return (f"llama.cpp {version} loads {architecture} only with its own output.weight, and this model ties its "
                f"embeddings (tie_word_embeddings: true)")
    return None


def tokenizer_problem(folder: Path) -> str | None:
    """A byte-level BPE tokenizer whose pre-tokenizer this converter does not know (it would fail after the work)."""
    digest = converter.unknown_pre_tokenizer(folder)
    if digest is None:
        return None
    return (f"llama.cpp {converter.bindings_version()}'s converter does not know this model's BPE pre-tokenizer "
            f"(hash {digest[:12]}...; a newer llama-cpp-python may)")


def mmproj_problem(config: dict) -> str | None:
    """Why this llama.cpp cannot write a GGUF + mmproj pair for a vision-language model's config, or None."""
    architecture = (config.get("architectures") or ["?"])[0]
    text_architecture = ((config.get("text_config") or {}).get("architectures") or [architecture])[0]
    version = converter.bindings_version()
    if architecture not in converter.architectures(mmproj=True):
        return f"llama.cpp {version}'s converter has no image projector (mmproj) for {architecture}"
    if text_architecture not in converter.architectures(mmproj=False):
        return f"llama.cpp {version}'s converter cannot convert {architecture}'s language model ({text_architecture})"
    known = KNOWN_MMPROJ_FAILURES.get((architecture, version))
    if known:
        return f"llama.cpp {version}'s converter fails on {architecture}'s image side: {known}"
    vision_type = (config.get("vision_config") or {}).get("model_type")
    if architecture == "LlavaForConditionalGeneration" and vision_type != "pixtral":
        return (f"llama.cpp {version}'s converter writes an mmproj for LLaVA with a Pixtral encoder only, not "
                f"{vision_type} (its legacy llava scripts are not part of the converter)")
    return None


MTP_FAMILIES = ("qwen3_next", "qwen3_5", "qwen3_5_moe", "qwen3_5_text", "qwen3_5_moe_text")  # the converter expects their mtp.* layers unless told


def drops_mtp(folder: Path, config: dict) -> bool:
    """A Qwen3.5 / Qwen3-Next whose safetensors have no multi-token-prediction layers (`mtp.*`): transformers
    does not load them, so a merge saves none, and the converter must be told (--no-mtp) to skip them."""
    return config.get("model_type") in MTP_FAMILIES and not has_mtp_weights(folder)


def has_mtp_weights(folder: Path) -> bool:
    from safetensors import safe_open

    for file in folder.glob("*.safetensors"):
        with safe_open(str(file), "pt") as weights:
            if any(".mtp." in f".{name}" for name in weights.keys()):
                return True
    return False


def is_k_quant(quant: str) -> bool:
    return "_k" in quant


def k_quant_fallbacks(config: dict) -> dict[str, int]:
    """Row sizes that are not a multiple of K_QUANT_BLOCK; llama.cpp quantizes those tensors with a
    fallback type (q5_0, q8_0, ...) instead of the k-quant asked for."""
    sizes = {k: config.get(k) for k in ("hidden_size", "intermediate_size", "moe_intermediate_size")}
    return {k: v for k, v in sizes.items() if isinstance(v, int) and v % converter.K_QUANT_BLOCK}


def source_dtype(config: dict) -> str:
    return str(config.get("dtype") or config.get("torch_dtype") or "float32")


def intermediate_type(dtype: str) -> str:
    """The lossless converter outtype that a quantized type is made from."""
    return {"bfloat16": "bf16", "float16": "f16"}.get(dtype, "f32")


@stage("gguf", config=GGUFConfig, consumes=set(MODEL_KINDS), produces="gguf",
       libraries=("torch", "transformers", "peft", "gguf", "llama-cpp-python"), isolated=True, variant=True,
       percent=PARITY_PERCENT)
def run(cfg: GGUFConfig, inputs: Inputs, ctx: StageContext) -> Artifact:
    """Convert the input model (an adapter is merged first) to a checked GGUF and an Ollama Modelfile."""
    source = inputs.primary
    merged_dir, staged_dir = ctx.out_dir / "merged-hf", ctx.out_dir / "converter-src"
    meta: dict[str, Any] = {"quant": cfg.quant, "merged": source.kind == ArtifactKind.adapter}
    metrics: dict[str, Any] = {}
    try:
        if source.kind == ArtifactKind.adapter:
            started = time.time()
            meta.update(_merge(source, ctx, merged_dir))
            metrics["merge_seconds"] = round(time.time() - started, 2)
            hf_source = Artifact(kind="model", path=str(merged_dir), fingerprint="", format="hf",
                                 base_model=source.base_model, stage=source.stage)
        else:
            hf_source = source
        hf_dir = _local_folder(hf_source, ctx)
        config = json.loads((hf_dir / "config.json").read_text())
        if config.get("quantization_config"):
            method = config["quantization_config"].get("quant_method", "?")
            raise PlanError(f"stages.{ctx.name}: {hf_dir} is a {method}-quantized checkpoint; llama.cpp's converter "
                            f"needs the unquantized model (set stages.{ctx.name}.inputs to the stage before it)")
        meta["source_dtype"] = source_dtype(config)

        started = time.time()
        expected = hf_expectations(hf_dir, ctx.model)
        convert_dir, meta["tokenizer_config_patched"] = converter_folder(hf_dir, expected, staged_dir)
        out_file = _build(cfg, convert_dir, config, meta, ctx)
        ctx.log(f"converted {hf_dir} to {meta['converter_outtype']}"
                + (f", quantized to {cfg.quant}" if cfg.quant != meta["converter_outtype"] else ""))
        meta["metadata_fixed"] = verify_and_fix(out_file, expected, ctx.log)
        if folder_is_vision(hf_dir):  # the image encoder and projector, in their own file beside the model's
            meta["mmproj"] = _build_mmproj(convert_dir, meta, ctx).name
            ctx.log(f"image projector: {meta['mmproj']}")
        metrics["convert_seconds"] = round(time.time() - started, 2)
        meta.update(file=out_file.name, chat_template_present=expected["chat_template"] is not None,
                    eos_token=expected["eos_text"], eos_token_id=expected["eos_id"],
                    stop_tokens=[expected["tokens"][i] for i in expected["stop_ids"]],
                    stop_token_ids=expected["stop_ids"], add_bos=expected["add_bos"])
        meta["template_style"] = modelfile.template_style(expected["chat_template"])
        meta["default_system"] = expected["default_system"]
        if cfg.modelfile:
            modelfile.write(ctx.out_dir, out_file.name, expected["chat_template"], meta["stop_tokens"],
                            title=f"{ctx.model.name} ({cfg.quant})", system=expected["default_system"],
                            generation_prompt=expected["generation_prompt"])

        gguf_bytes, source_bytes = out_file.stat().st_size, weight_bytes(hf_dir)
        metrics.update(size_mb=round(gguf_bytes / 2**20, 2), source_size_mb=round(source_bytes / 2**20, 2),
                       compression_ratio=round(source_bytes / gguf_bytes, 3) if source_bytes else None)
        exported = Artifact(kind="gguf", path=str(ctx.out_dir), fingerprint="", format=f"gguf-{cfg.quant}",
                            base_model=source.base_model or source.path,
                            meta={"file": out_file.name, **({"mmproj": meta["mmproj"]} if "mmproj" in meta else {})})
        metrics.update(compare_with_source(cfg, hf_source, exported, ctx))
    finally:
        shutil.rmtree(staged_dir, ignore_errors=True)
        shutil.rmtree(merged_dir, ignore_errors=True)
    ctx.log(f"{out_file.name}: {metrics['size_mb']} MB (safetensors {metrics['source_size_mb']} MB), "
            f"chat template {'kept' if meta['chat_template_present'] else 'absent'}, stops at {meta['stop_tokens']}")
    return Artifact(kind="gguf", path=str(ctx.out_dir), fingerprint="", format=f"gguf-{cfg.quant}",
                    base_model=source.base_model or source.path, metrics=metrics, meta=meta)


def _merge(adapter: Artifact, ctx: StageContext, out_dir: Path) -> dict:
    out_dir.mkdir(parents=True, exist_ok=True)
    found = merge_adapter(adapter, ctx, out_dir)
    ctx.log(f"merged adapter {adapter.path} into the {found.get('merged_into')} of {adapter.base_model}")
    return {k: v for k, v in found.items() if k != "params"}


def _local_folder(artifact: Artifact, ctx: StageContext) -> Path:
    """The HF folder on disk (a hub base model is fetched into the HF cache)."""
    folder = local_folder(artifact.path)
    if folder is not None:
        return folder
    from huggingface_hub import snapshot_download

    revision = ctx.model.revision if artifact.path == ctx.model.path else None
    return Path(snapshot_download(artifact.path, revision=revision,
                                  allow_patterns=["*.json", "*.safetensors", "*.model", "*.jinja", "*.txt",
                                                  "*.tiktoken"]))


def _build_mmproj(hf_dir: Path, meta: dict, ctx: StageContext) -> Path:
    """mmproj-<type>.gguf: the image side at the source's precision (f32 stays f32, 16-bit becomes f16); the
    language model's quantization does not apply to it, as llama.cpp's own releases ship it."""
    outtype = "f32" if meta["source_dtype"] == "float32" else "f16"
    out_file = ctx.out_dir / f"{MMPROJ}-{outtype}.gguf"
    converter.convert(hf_dir, out_file, outtype, ctx.model.name, mmproj=True)
    return out_file


# llama.cpp's loader sets token attributes for a model whose general.name holds "phi-3" or "phi3", looking up
# these tokens by text: where the vocabulary lacks one it fails to load ("unordered_map::at"; seen here).
PHI3_NAME = re.compile(r"phi-?3", re.IGNORECASE)
PHI3_NAME_TOKENS = ("<unk>", "<s>", "</s>", "<|endoftext|>")


def gguf_name(name: str, hf_dir: Path, log) -> str:
    """The general.name to write: the model's, unless it would switch on llama.cpp's Phi-3 workaround for a
    vocabulary without its tokens (a Phi-3 named model with another tokenizer), then without "phi-3"."""
    if not PHI3_NAME.search(name):
        return name
    from transformers import AutoTokenizer

    vocab = AutoTokenizer.from_pretrained(hf_dir).get_vocab()
    missing = [t for t in PHI3_NAME_TOKENS if t not in vocab]
    if not missing:
        return name
    safe = PHI3_NAME.sub("phi_3", name)
    log(f"general.name '{name}' would make llama.cpp look up Phi-3's tokens {missing}, which this vocabulary "
        f"lacks, and fail to load: written as '{safe}'")
    return safe


def _build(cfg: GGUFConfig, hf_dir: Path, config: dict, meta: dict, ctx: StageContext) -> Path:
    """Convert (and quantize); returns ctx.out_dir/model-<quant>.gguf."""
    out_file = ctx.out_dir / f"model-{cfg.quant}.gguf"
    name = gguf_name(ctx.model.name, hf_dir, ctx.log)
    if cfg.quant in converter.CONVERTER_TYPES:
        meta["converter_outtype"] = cfg.quant
        converter.convert(hf_dir, out_file, cfg.quant, name, no_mtp=drops_mtp(hf_dir, config))
        return out_file
    outtype = intermediate_type(meta["source_dtype"])
    meta["converter_outtype"] = outtype
    if is_k_quant(cfg.quant):
        fallbacks = k_quant_fallbacks(config)
        if fallbacks:
            meta["k_quant_fallback"] = fallbacks
            sizes = ", ".join(f"{k} {v}" for k, v in fallbacks.items())
            ctx.log(f"warning: {sizes}: not multiples of {converter.K_QUANT_BLOCK}: llama.cpp quantizes those "
                    f"tensors with a fallback type instead of {cfg.quant} (a larger file, other quality)")
    intermediate = ctx.out_dir / f"model-{outtype}.gguf"
    converter.convert(hf_dir, intermediate, outtype, name, no_mtp=drops_mtp(hf_dir, config))
    converter.quantize(intermediate, out_file, cfg.quant)
    if cfg.keep_intermediate:
        meta["intermediate"] = intermediate.name
    else:
        intermediate.unlink()
    return out_file
