"""Model configs, the base-model artifact, and loading models and tokenizers.

A model is named by `conf/model/*.yaml`: a local folder or a hub id. Hub access is checked
at plan time with a short connection probe, so an unreachable hub fails in one line before any
work starts instead of after minutes of retries.
"""
from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, List, Optional
from urllib.parse import urlparse

from omegaconf import MISSING

from .artifacts import Artifact
from .errors import ModelUnavailable
from .fingerprint import folder_digest

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DTYPES = ("auto", "float32", "bfloat16", "float16")


@dataclass
class ModelConfig:
    name: str = MISSING
    path: str = MISSING                     # local folder or hub id
    revision: Optional[str] = None          # hub revision (branch, tag or commit)
    dtype: str = "auto"                     # auto | float32 | bfloat16 | float16
    chat_template: Optional[str] = None     # null: the tokenizer's own; else a .jinja file
    lora_target_modules: List[str] = field(default_factory=lambda: ["all-linear"])
    trust_remote_code: bool = False
    params_b: Optional[float] = None        # parameter count (billions) for planning hub models
    attn_implementation: Optional[str] = None


def local_folder(path: str) -> Path | None:
    """A model path as an existing local folder (relative to cwd, then the project root)."""
    for candidate in (Path(path).expanduser(), PROJECT_ROOT / path):
        if candidate.is_dir():
            return candidate.resolve()
    return None


def looks_like_hub_id(path: str) -> bool:
    return not path.startswith((".", "/", "~")) and path.count("/") == 1


def base_artifact(model: ModelConfig) -> Artifact:
    """The chain's starting point, as an artifact that stages can consume."""
    folder = local_folder(model.path)
    if folder is not None:
        return Artifact(kind="model", path=str(folder), fingerprint=folder_digest(folder)[:20],
                        format="hf", base_model=str(folder), stage="base")
    return Artifact(kind="model", path=model.path, fingerprint=f"hub-{model.path}@{model.revision or 'main'}",
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
    if os.environ.get("HF_HUB_OFFLINE") == "1" or not _hub_reachable():
        raise ModelUnavailable(
            f"model '{model.name}' ({model.path}) cannot be fetched: the hub is unreachable and it is not in the "
            f"local cache. Download it where there is network, or set model.path to a local folder.")


def _hub_reachable(timeout: float = 3.0) -> bool:
    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        with socket.create_connection((endpoint.hostname, endpoint.port or 443), timeout=timeout):
            return True
    except OSError:
        return False


def torch_dtype(name: str, device: str):
    import torch

    if name == "auto":
        return torch.bfloat16 if device == "cuda" and torch.cuda.is_bf16_supported() else torch.float32
    return getattr(torch, name)


def pick_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def load_tokenizer(source: str, model: ModelConfig, padding_side: str = "right"):
    from transformers import AutoTokenizer

    tokenizer = _from_pretrained(AutoTokenizer, source, model)
    if model.chat_template:
        tokenizer.chat_template = resolve_file(model.chat_template).read_text()
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = padding_side
    return tokenizer


def load_causal_lm(artifact: Artifact, model: ModelConfig, device: str, dtype_name: str | None = None,
                   merge_adapter: bool = False):
    """Load a model artifact, or an adapter artifact on top of its base."""
    from transformers import AutoModelForCausalLM

    dtype = torch_dtype(dtype_name or model.dtype, device)
    kwargs: dict[str, Any] = {"dtype": dtype}
    if model.attn_implementation:
        kwargs["attn_implementation"] = model.attn_implementation
    if artifact.kind == "adapter":
        from peft import PeftModel

        base = _from_pretrained(AutoModelForCausalLM, artifact.base_model, model, **kwargs)
        lm = PeftModel.from_pretrained(base, artifact.path)
        if merge_adapter:
            lm = lm.merge_and_unload()
    else:
        lm = _from_pretrained(AutoModelForCausalLM, artifact.path, model, **kwargs)
    return lm.to(device)


def _from_pretrained(cls, source: str, model: ModelConfig, **kwargs):
    revision = model.revision if source == model.path else None
    try:
        return cls.from_pretrained(source, revision=revision, trust_remote_code=model.trust_remote_code, **kwargs)
    except OSError as e:
        first = str(e).strip().splitlines()[0][:200]
        raise ModelUnavailable(f"cannot load '{source}' for model '{model.name}': {first}") from None


def resolve_file(path: str) -> Path:
    for candidate in (Path(path).expanduser(), PROJECT_ROOT / path):
        if candidate.is_file():
            return candidate
    raise ModelUnavailable(f"file not found: {path} (relative paths are tried from the working folder, then {PROJECT_ROOT})")
