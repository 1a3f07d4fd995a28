"""llama.cpp's converter and quantizer at the version the installed bindings were built from.

The llama-cpp-python wheel has no converter, but its source distribution carries llama.cpp's
`convert_hf_to_gguf.py` with the matching `gguf-py` (PyPI's gguf does not fit it). The first
export downloads that sdist once into the cache (TUNECHAIN_CACHE, default ~/.cache/tunechain) and
keeps only the converter's files; nothing of llama.cpp is committed here.
"""
from __future__ import annotations

import contextlib
import importlib.metadata
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Iterator

from pipeline.errors import PlanError
from pipeline.paths import cache_root

DIST = "llama-cpp-python"
CONVERTER_PARTS = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/")
# outtypes the converter writes itself; every other type is made from an f32/f16 file by the quantizer
CONVERTER_TYPES = ("f32", "f16", "bf16", "q8_0")
QUANT_TYPES = ("f32", "f16", "bf16", "q8_0", "q6_k", "q5_k_m", "q5_k_s", "q5_0", "q4_k_m", "q4_k_s", "q4_0",
               "q3_k_m", "q2_k", "iq4_nl")
K_QUANT_BLOCK = 256  # k-quants pack rows in blocks of 256 values


def bindings_version() -> str:
    try:
        return importlib.metadata.version(DIST)
    except importlib.metadata.PackageNotFoundError:
        raise PlanError("GGUF export needs llama-cpp-python: pip install -e '.[gguf]' "
                        "(it compiles llama.cpp: 7-13 minutes on 2 cores, once; pip keeps the wheel)") from None


def converter_dir(download: bool = True) -> Path:
    """The folder holding convert_hf_to_gguf.py for the installed bindings' llama.cpp."""
    version = bindings_version()
    folder = cache_root() / f"llama.cpp-{version}"
    if (folder / "convert_hf_to_gguf.py").is_file():
        return folder
    if not download:
        raise PlanError(f"llama.cpp converter not in {folder}")
    _fetch_converter(version, folder)
    return folder


def _fetch_converter(version: str, folder: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "-q", "-d", tmp,
               f"{DIST}=={version}"]
        done = subprocess.run(cmd, capture_output=True, text=True)
        sdists = list(Path(tmp).glob("*.tar.gz"))
        if done.returncode != 0 or not sdists:
            last = (done.stderr.strip().splitlines() or ["no sdist downloaded"])[-1]
            raise PlanError(f"cannot fetch llama.cpp's converter ({DIST}=={version} sdist from PyPI): {last}. "
                            f"Where there is no network, unpack that sdist's vendor/llama.cpp into {folder}")
        staging = Path(tmp) / "converter"
        with tarfile.open(sdists[0]) as archive:
            members = []
            for member in archive.getmembers():
                inner = member.name.split("/vendor/llama.cpp/", 1)
                if len(inner) == 2 and inner[1].startswith(CONVERTER_PARTS) and (member.isfile() or member.isdir()):
                    member.name = inner[1]
                    members.append(member)
            archive.extractall(staging, members=members, filter="data")
        folder.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staging, folder) if not folder.exists() else None


def convert(hf_dir: Path, out_file: Path, outtype: str = "f16", model_name: str | None = None,
            mmproj: bool = False, no_mtp: bool = False) -> None:
    """HF folder -> GGUF with llama.cpp's own converter (tokenizer, chat template, special tokens).
    `model_name` becomes general.name (else the converter names it after the folder); `mmproj`: write
    a vision-language model's image encoder and projector instead of its language model; `no_mtp`: the
    weights carry no multi-token-prediction layers although the config may name some (a Qwen3.5 that
    transformers saved: it does not load them)."""
    folder = converter_dir()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(folder / "gguf-py"), str(folder)]),
               NO_LOCAL_GGUF="")
    cmd = [sys.executable, str(folder / "convert_hf_to_gguf.py"), str(hf_dir), "--outfile", str(out_file),
           "--outtype", outtype] + (["--model-name", model_name] if model_name else []) + (["--mmproj"] if mmproj else []) \
        + (["--no-mtp"] if no_mtp else [])
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode != 0 or not out_file.is_file():
        tail = "\n".join(done.stderr.strip().splitlines()[-6:])
        raise RuntimeError(f"llama.cpp converter failed on {hf_dir}:\n{tail}")


def architectures(mmproj: bool) -> set[str]:
    """The HF architectures this llama.cpp's converter turns into a language-model GGUF (or, `mmproj`, into an
    image projector GGUF), read from its registry (conversion/__init__.py) without running it."""
    import ast

    source = (converter_dir() / "conversion" / "__init__.py").read_text()
    wanted = "MMPROJ_MODEL_MAP" if mmproj else "TEXT_MODEL_MAP"
    for node in ast.walk(ast.parse(source)):
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
        if any(isinstance(t, ast.Name) and t.id == wanted for t in targets) and isinstance(node.value, ast.Dict):
            return {k.value for k in node.value.keys if isinstance(k, ast.Constant)}
    raise PlanError(f"llama.cpp {bindings_version()}'s converter has no {wanted}: cannot tell what it converts")


def unknown_pre_tokenizer(folder: Path) -> str | None:
    """The hash of a byte-level BPE tokenizer's pre-tokenizer where this converter does not know it (it then fails
    with "BPE pre-tokenizer was not recognized"), else None. The converter's own check, read from its source:
    tokenize its test text, hash the ids, look the hash up. SentencePiece folders (tokenizer.model) are not BPE."""
    import ast
    import hashlib
    import json
    import re

    tokenizer_file = folder / "tokenizer.json"
    if (folder / "tokenizer.model").is_file() or not tokenizer_file.is_file():
        return None
    if (json.loads(tokenizer_file.read_text()).get("model") or {}).get("type") != "BPE":
        return None
    source = (converter_dir() / "conversion" / "base.py").read_text()
    check_text = next((node.value.value for node in ast.walk(ast.parse(source)) if isinstance(node, ast.Assign)
                       and any(isinstance(t, ast.Name) and t.id == "chktxt" for t in node.targets)
                       and isinstance(node.value, ast.Constant)), None)
    if check_text is None:
        return None  # a converter laid out otherwise: it will judge the tokenizer itself
    from transformers import AutoTokenizer

    ids = AutoTokenizer.from_pretrained(folder).encode(check_text)
    digest = hashlib.sha256(str(ids).encode()).hexdigest()
    return None if digest in set(re.findall(r'chkhsh == "([0-9a-f]{64})"', source)) else digest


def quantize(src: Path, dst: Path, quant: str, threads: int = 0) -> None:
    """Re-quantize a GGUF with llama.cpp's quantizer (the bindings' llama_model_quantize)."""
    import llama_cpp
    from llama_cpp._utils import suppress_stdout_stderr

    ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{quant.upper()}", None)
    if ftype is None:
        raise PlanError(f"llama.cpp {bindings_version()} has no quantization type '{quant}'")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.nthread = threads
    with suppress_stdout_stderr(disable=False):  # the C quantizer prints a line per tensor
        code = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), params)
    if code != 0 or not dst.is_file():
        raise RuntimeError(f"llama.cpp quantizer failed ({code}) making {quant} from {src}")


@contextlib.contextmanager
def open_vocab(path: Path) -> Iterator:
    """A GGUF loaded vocab-only (no weights, no context): the llama_model pointer llama.cpp reads."""
    import llama_cpp
    from llama_cpp._utils import suppress_stdout_stderr

    llama_cpp.llama_backend_init()
    params = llama_cpp.llama_model_default_params()
    params.vocab_only = True
    with suppress_stdout_stderr(disable=False):
        model = llama_cpp.llama_model_load_from_file(str(path).encode(), params)
    if not model:
        raise RuntimeError(f"llama.cpp cannot load {path}")
    try:
        yield model
    finally:
        llama_cpp.llama_model_free(model)


def _meta_text(read, model, index: int) -> str:
    # read() returns the full length (snprintf): a string of exactly the buffer size is cut by one byte
    # unless the buffer is longer than the length, so retry until it is.
    import ctypes

    size = 1024
    while True:
        buffer = ctypes.create_string_buffer(size)
        needed = read(model, index, buffer, size)
        if needed < size:
            return buffer.value.decode("utf-8", errors="replace")
        size = needed + 1


def metadata(path: Path) -> dict[str, str]:
    """The GGUF's key/value metadata as llama.cpp reads it (strings, untruncated)."""
    import llama_cpp

    with open_vocab(path) as model:
        return {_meta_text(llama_cpp.llama_model_meta_key_by_index, model, i):
                _meta_text(llama_cpp.llama_model_meta_val_str_by_index, model, i)
                for i in range(llama_cpp.llama_model_meta_count(model))}
