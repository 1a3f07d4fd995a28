"""Where the chain's model is (folder or hub), its dtype and device, and loading it and its tokenizer.

A model is named by `conf/model/*.yaml`: a local folder or a hub id. Hub access is checked
at plan time with a short connection probe, so an unreachable hub fails in one line before any
work starts instead of after minutes of retries.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from pipeline import paths
from pipeline.artifact import Artifact, ArtifactKind
from pipeline.errors import ConfigError, ModelUnavailable
from pipeline.hashing import folder_digest
from pipeline.hub import hub_commit, hub_reachable
from pipeline.models.config import DTYPES, ModelConfig
from pipeline.models.vision import copy_processor_files, folder_is_vision, without_torchvision


def local_folder(path: str) -> Path | None:
    """A model path as an existing local folder (pipeline.paths' rule), else None (a hub id)."""
    folder = paths.resolve(path)
    return folder.resolve() if folder.is_dir() else None


def looks_like_hub_id(path: str) -> bool:
    return not path.startswith((".", "/", "~")) and path.count("/") == 1


def base_artifact(model: ModelConfig) -> Artifact:
    """The chain's starting point, as an artifact that stages can consume."""
    folder = local_folder(model.path)
    if folder is not None:
        return Artifact(kind="model", path=str(folder), fingerprint=folder_digest(folder)[:20],
                        format="hf", base_model=str(folder), stage="base")
    commit = hub_commit(model.path, model.revision, "model")
    return Artifact(kind="model", path=model.path, fingerprint=f"hub-{model.path}@{commit}",
                    format="hub", base_model=model.path, stage="base")


def check_available(model: ModelConfig) -> None:
    """Fail fast, in one line, if the model can be neither found locally nor fetched."""
    folder = local_folder(model.path)
    if folder is not None:
        if not (folder / "config.json").is_file():
            raise ModelUnavailable(f"model.path '{model.path}': folder {folder} has no config.json (not a Hugging Face model folder)")
        return
    if not looks_like_hub_id(model.path):
        raise ModelUnavailable(f"model.path '{model.path}': no such folder, and not a hub id of the form owner/name")
    from huggingface_hub import try_to_load_from_cache

    if isinstance(try_to_load_from_cache(model.path, "config.json", revision=model.revision), str):
        return
    if os.environ.get("HF_HUB_OFFLINE") == "1" or not hub_reachable():
        raise ModelUnavailable(
            f"model '{model.name}' ({model.path}) cannot be fetched: the hub is unreachable and it is not in the "
            f"local cache. Download it where there is network, or set model.path to a local folder.")


def declared_dtype(path: str | None) -> str | None:
    """The dtype a model's config.json declares (dtype, or torch_dtype in older files), if it can be read."""
    if not path:
        return None
    folder = local_folder(path)
    config_file = folder / "config.json" if folder else None
    if config_file is None and looks_like_hub_id(path):
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(path, "config.json")
        config_file = Path(cached) if isinstance(cached, str) else None
    if config_file is None or not config_file.is_file():
        return None
    config = json.loads(config_file.read_text())
    value = config.get("dtype") or config.get("torch_dtype")
    return value if value in DTYPES else None


def resolve_dtype(name: str, device: str, model_path: str | None = None) -> str:
    """`auto`: the model's declared dtype on a GPU (bfloat16 falls back to float16 where unsupported),
    float32 on CPU, where half-precision matmuls are several times slower."""
    if name != "auto":
        return name
    if device != "cuda":
        return "float32"
    import torch

    declared = declared_dtype(model_path) or "bfloat16"
    if declared == "bfloat16" and not torch.cuda.is_bf16_supported():
        return "float16"
    return declared


def torch_dtype(name: str, device: str, model_path: str | None = None):
    import torch

    return getattr(torch, resolve_dtype(name, device, model_path))


def pick_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def load_tokenizer(source: str, model: ModelConfig, padding_side: str = "right"):
    from transformers import AutoTokenizer

    tokenizer = _from_pretrained(AutoTokenizer, source, model)
    if model.chat_template:
        tokenizer.chat_template = resolve_file(model.chat_template).read_text()
    if isinstance(tokenizer.chat_template, str):
        tokenizer.chat_template = with_thinking(tokenizer.chat_template, model.enable_thinking)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = padding_side
    return tokenizer


def is_vision(model, path: str | None = None) -> bool:
    """Whether the chain's model (a ModelConfig) is a VLM: its entry's `vision`, else its folder's config."""
    if model.vision is not None:
        return bool(model.vision)
    folder = local_folder(path or model.path)
    return folder_is_vision(folder)


def load_processor(source: str, model, padding_side: str = "right"):
    """The model's AutoProcessor, with the entry's chat template and thinking switch applied as for a tokenizer."""
    from transformers import AutoProcessor

    try:
        processor = _from_pretrained(AutoProcessor, source, model)
    except ImportError as error:  # a video-capable processor (Qwen-VL) where torchvision is missing
        processor = without_torchvision(_folder_of(source, model), error)
    tokenizer = load_tokenizer(source, model, padding_side)  # pad token, template override, thinking switch
    processor.tokenizer = tokenizer
    if model.chat_template or getattr(processor, "chat_template", None) is None:
        processor.chat_template = tokenizer.chat_template
    return processor


def _folder_of(source: str, model: ModelConfig) -> Path:
    """A local folder, or the hub snapshot transformers cached for it."""
    folder = local_folder(source)
    if folder is not None:
        return folder
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(source, revision=model.revision if source == model.path else None,
                                  allow_patterns=["*.json", "*.jinja"]))


def save_tokenizer(tokenizer, source: Artifact, out_dir: Path | str) -> None:
    """Save `tokenizer` (loaded from `source`'s tokenizer folder) beside the model written to `out_dir`, with a
    VLM's processor files.
    save_pretrained does not write a SentencePiece tokenizer.model: it is copied from that folder."""
    tokenizer = getattr(tokenizer, "tokenizer", tokenizer)  # a VLM's processor: its files are copied below
    tokenizer.save_pretrained(out_dir)
    copy_processor_files(source.tokenizer_dir(), out_dir)  # a VLM's image processor and its template
    original = Path(source.tokenizer_dir()) / "tokenizer.model"
    if original.is_file() and not (Path(out_dir) / "tokenizer.model").exists():
        shutil.copy2(original, Path(out_dir) / "tokenizer.model")


THINKING_VARIABLE = "enable_thinking"
_THINKING_SET = "{%- set enable_thinking = "


def with_thinking(template: str, enable: bool | None) -> str:
    """The chat template with its thinking switch fixed to `enable` (None: as it is).

    The switch is set inside the template rather than passed to each apply_chat_template call, so
    training, eval, the saved tokenizers of every artifact, the GGUF's embedded template and the
    servers all render the same prompts. A template that was already switched is switched again."""
    if template.startswith(_THINKING_SET):
        template = template.split("%}", 1)[1]
    if enable is None or THINKING_VARIABLE not in template:
        return template
    return f"{_THINKING_SET}{'true' if enable else 'false'} %}}{template}"


def saved_chat_template(folder: Path) -> str | None:
    """The chat template an HF folder carries (chat_template.jinja, else tokenizer_config.json's)."""
    if (folder / "chat_template.jinja").is_file():
        return (folder / "chat_template.jinja").read_text()
    config = folder / "tokenizer_config.json"
    template = json.loads(config.read_text()).get("chat_template") if config.is_file() else None
    return template if isinstance(template, str) else None


def check_thinking_switch(model: ModelConfig) -> None:
    """model.enable_thinking set for a template without that switch would silently do nothing."""
    folder = local_folder(model.path)
    if model.enable_thinking is None or (folder is None and not model.chat_template):
        return  # nothing to check, or a hub model not downloaded yet (its template is checked on load)
    template = resolve_file(model.chat_template).read_text() if model.chat_template else saved_chat_template(folder)
    if template is not None and THINKING_VARIABLE not in template:
        raise ConfigError(f"model.enable_thinking: {model.enable_thinking}, but the chat template of '{model.path}' has "
                          f"no {THINKING_VARIABLE} switch; leave it null for this model")


def load_causal_lm(artifact: Artifact, model: ModelConfig, device: str, dtype_name: str | None = None,
                   merge_adapter: bool = False):
    """Load a model artifact, or an adapter artifact on top of its base (a VLM with its image side)."""
    dtype = torch_dtype(dtype_name or model.dtype, device, model.path)
    kwargs: dict[str, Any] = {"dtype": dtype}
    implementation = attention(model, device, dtype)
    if implementation:
        kwargs["attn_implementation"] = implementation
    if artifact.kind == ArtifactKind.adapter:
        from peft import PeftModel

        base = _from_pretrained(model_class(artifact.base_model, model), artifact.base_model, model, **kwargs)
        lm = PeftModel.from_pretrained(base, artifact.path)
        if merge_adapter:
            lm = lm.merge_and_unload()
    else:
        lm = _from_pretrained(model_class(artifact.path, model), artifact.path, model, **kwargs)
    return lm if placed_by_sharding() else lm.to(device)


def load_reward_model(artifact: Artifact, model: ModelConfig, device: str, dtype_name: str | None = None):
    """A reward stage's model: sequence classification with one score (its folder's config says so)."""
    from transformers import AutoModelForSequenceClassification

    dtype = torch_dtype(dtype_name or model.dtype, device, model.path)
    scorer = _from_pretrained(AutoModelForSequenceClassification, artifact.path, model, dtype=dtype, num_labels=1)
    return scorer if placed_by_sharding() else scorer.to(device)


def model_class(path: str, model: ModelConfig):
    """AutoModelForImageTextToText for a vision-language model (its folder's config, or the entry's
    `vision` for a hub id not downloaded yet), else AutoModelForCausalLM."""
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

    folder = local_folder(path)
    vision = folder_is_vision(folder) if folder is not None else bool(model.vision)
    return AutoModelForImageTextToText if vision else AutoModelForCausalLM


def attention(model: ModelConfig, device: str, dtype) -> str | None:
    """model.attn_implementation, else flash_attention_2 on a GPU in 16-bit where flash-attn is installed,
    else None: transformers' own choice (sdpa, PyTorch's fused attention, where the model supports it)."""
    import importlib.util

    import torch

    if model.attn_implementation:
        return model.attn_implementation
    if device == "cuda" and dtype in (torch.bfloat16, torch.float16) and importlib.util.find_spec("flash_attn"):
        return "flash_attention_2"
    return None


def read_config(folder: Path | str | None) -> dict | None:
    """A local model folder's config.json (None where there is none, or it is not JSON)."""
    try:
        return json.loads((Path(folder) / "config.json").read_text()) if folder else None
    except (OSError, ValueError):
        return None


def module_names(folder: Path) -> set[str]:
    """Names of the modules that hold a local model's weights, read from the safetensors headers (no loading)."""
    from safetensors import safe_open

    names = set()
    for file in Path(folder).glob("*.safetensors"):
        with safe_open(str(file), "pt") as weights:
            names.update(name.rsplit(".", 1)[0] for name in weights.keys())
    return names


def unmatched_targets(folder: Path | None, targets: list[str]) -> list[str]:
    """LoRA target names that match no module of a local model (peft matches a name or a dotted suffix);
    [] where it cannot tell (a hub id, no safetensors, `all-linear`)."""
    if folder is None or not targets or targets == ["all-linear"]:
        return []
    names = module_names(folder)
    if not names:
        return []
    return [t for t in targets if not any(n == t or n.endswith("." + t) for n in names)]


def model_type(path: str | None) -> str | None:
    """config.json's model_type of a local model folder (None for hub ids not yet fetched, GGUF files...)."""
    config = read_config(local_folder(path) if path else None)
    return config.get("model_type") if config else None


def placed_by_sharding() -> bool:
    """True when the trainer arguments of a ZeRO-3 or FSDP (cpu_ram_efficient_loading) job exist: then
    from_pretrained created the weights partitioned, or on the meta device outside rank 0, and
    DeepSpeed / FSDP place them; moving them here would gather (or fail on) them."""
    from transformers.integrations import is_fsdp_enabled
    from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled

    return is_deepspeed_zero3_enabled() or is_fsdp_enabled()


def whole_weights_for_generation(model):
    """(context, processes that hold whole weights) for generating with a training stage's model before its trainer
    wraps it: under ZeRO-3 every rank holds a slice of each weight, gathered whole inside the context (as trl does
    before it generates); under FSDP's cpu_ram_efficient_loading only rank 0 holds the weights (the others'
    are on the meta device until accelerate broadcasts them), so only the first process may generate."""
    from contextlib import nullcontext

    from transformers.integrations import is_fsdp_enabled
    from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled

    if is_deepspeed_zero3_enabled():
        import deepspeed

        return deepspeed.zero.GatheredParameters(list(model.parameters())), None
    return nullcontext(), 1 if is_fsdp_enabled() else None


def _from_pretrained(cls, source: str, model: ModelConfig, **kwargs):
    revision = model.revision if source == model.path else None
    try:
        return cls.from_pretrained(source, revision=revision, trust_remote_code=model.trust_remote_code, **kwargs)
    except OSError as e:
        first = str(e).strip().splitlines()[0][:200]
        raise ModelUnavailable(f"cannot load '{source}' for model '{model.name}': {first}") from None


def resolve_file(path: str) -> Path:
    found = paths.resolve(path)
    if found.is_file():
        return found
    raise ModelUnavailable(f"file not found: {path} (tried {paths.tried(path)})")
