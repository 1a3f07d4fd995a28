"""What a GGUF must say, read from the HF folder it came from (chat template, eos, add_bos, stop
ids, default system prompt), the check of a written file against it through llama.cpp, and the
rewrite of values that differ (gguf-py, as its gguf_new_metadata script does)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from pipeline.llama_cpp import converter
from pipeline.models.config import ModelConfig
from pipeline.models.loading import load_tokenizer

# A multi-turn chat with a system prompt: rendered by both tokenizers to compare their tokenization.
PROBE_CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 12 + 30?"},
              {"role": "assistant", "content": "42"}, {"role": "user", "content": "And 7 * 6?"}]


def hf_expectations(hf_dir: Path, model: ModelConfig) -> dict:
    """Chat template, eos, add_bos and stop ids as the HF tokenizer and generation_config give them."""
    tok = load_tokenizer(str(hf_dir), model)
    stop_ids = []
    generation = hf_dir / "generation_config.json"
    if generation.is_file():
        eos = json.loads(generation.read_text()).get("eos_token_id")
        stop_ids = list(eos) if isinstance(eos, list) else [eos] if eos is not None else []
    if tok.eos_token_id is not None and tok.eos_token_id not in stop_ids:
        stop_ids.insert(0, tok.eos_token_id)
    probe = tok("a")["input_ids"]
    add_bos = tok.bos_token_id is not None and probe[:1] == [tok.bos_token_id]
    first = tok.convert_ids_to_tokens(tok("a", add_special_tokens=False)["input_ids"][:1])
    space_prefix = bool(first) and str(first[0]).startswith("\u2581")  # SentencePiece's dummy prefix "▁"
    template = tok.chat_template if isinstance(tok.chat_template, str) else None
    probe = f"Hello, 12 + 30 = 42.{tok.eos_token or ''}"
    if template:
        try:  # the turn markers as the chat template writes them: they must come out as single tokens
            probe = tok.apply_chat_template(PROBE_CHAT, tokenize=False, add_generation_prompt=True)
        except Exception:  # noqa: BLE001 - a template that refuses this conversation: keep the plain probe
            pass
    added = {str(i): {"content": t.content, "lstrip": t.lstrip, "normalized": t.normalized, "rstrip": t.rstrip,
                      "single_word": t.single_word, "special": t.special}
             for i, t in sorted(tok.added_tokens_decoder.items())}
    return {"chat_template": template, "eos_id": tok.eos_token_id, "eos_text": tok.eos_token,
            **turn_texts(tok),
            "add_bos": bool(add_bos), "space_prefix": space_prefix, "stop_ids": [int(i) for i in stop_ids],
            "tokens": {int(i): tok.convert_ids_to_tokens(int(i)) for i in stop_ids},
            "added_tokens": added, "probe": probe, "probe_ids": tok(probe, add_special_tokens=False)["input_ids"]}


USER, SYSTEM = "\x1eUSER\x1e", "\x1eSYSTEM\x1e"  # messages no template rewrites, to see what it adds around them


def turn_texts(tok) -> dict:
    """What the chat template writes around one user message: the system prompt it adds when a chat has
    none (SmolLM2's) and the generation prompt (Qwen3 with thinking off opens an empty think block there).
    The Ollama Modelfile needs both; None where the template adds no such text."""
    found = {"default_system": None, "generation_prompt": None}
    if not isinstance(tok.chat_template, str):
        return found
    render = tok.apply_chat_template
    try:
        chat = [{"role": "user", "content": USER}]
        plain, prompted = render(chat, tokenize=False), render(chat, tokenize=False, add_generation_prompt=True)
        framed = render([{"role": "system", "content": SYSTEM}] + chat, tokenize=False)
    except Exception:  # noqa: BLE001 - a template that refuses a lone user turn or a system turn
        return found
    if prompted.startswith(plain):
        found["generation_prompt"] = prompted[len(plain):]
    # framed = before + SYSTEM + after; a template with a default system prompt renders plain as before + D + after
    before, _, after = framed.partition(SYSTEM)
    if before and plain.startswith(before) and plain.endswith(after) and len(plain) > len(before) + len(after):
        found["default_system"] = plain[len(before):len(plain) - len(after)]
    return found


def converter_folder(hf_dir: Path, expected: dict, staging: Path) -> tuple[Path, list[str]]:
    """The folder to convert: `hf_dir`, or a linked copy of it whose tokenizer_config.json has what the
    converter reads there. transformers 5 saves added tokens only in tokenizer.json and omits
    add_bos_token, so a converted merge would tokenize `<|im_start|>` as plain text and add a BOS."""
    path = hf_dir / "tokenizer_config.json"
    tokenizer_config = json.loads(path.read_text()) if path.is_file() else {}
    patch: dict[str, Any] = {}
    if not tokenizer_config.get("added_tokens_decoder") and expected["added_tokens"]:
        patch["added_tokens_decoder"] = expected["added_tokens"]
    if "add_bos_token" not in tokenizer_config:
        patch["add_bos_token"] = expected["add_bos"]
    if not patch:
        return hf_dir, []
    staging.mkdir(parents=True, exist_ok=True)
    for item in hf_dir.iterdir():
        if item.name != path.name:
            (staging / item.name).symlink_to(item.resolve())
    (staging / path.name).write_text(json.dumps({**tokenizer_config, **patch}, indent=2, ensure_ascii=False))
    return staging, sorted(patch)


def read_gguf(path: Path, ids: list[int], probe: str = "") -> dict:
    """What llama.cpp reads from the file: metadata, add_bos, which of `ids` end generation, and the
    ids of `probe` (special tokens parsed, no BOS), as llama.cpp tokenizes a chat prompt."""
    import llama_cpp

    found = converter.metadata(path)
    with converter.open_vocab(path) as model:
        vocab = llama_cpp.llama_model_get_vocab(model)
        n_vocab = llama_cpp.llama_vocab_n_tokens(vocab)
        found_eog = {i: 0 <= i < n_vocab and bool(llama_cpp.llama_vocab_is_eog(vocab, i)) for i in ids}
        add_bos = bool(llama_cpp.llama_vocab_get_add_bos(vocab))
        text = probe.encode("utf-8")
        room = len(text) + 8
        buffer = (llama_cpp.llama_token * room)()
        count = llama_cpp.llama_tokenize(vocab, text, len(text), buffer, room, False, True)
    return {"metadata": found, "eog": found_eog, "add_bos": add_bos, "probe_ids": list(buffer[:max(count, 0)])}


def problems(expected: dict, found: dict) -> tuple[dict[str, tuple[str, Any]], list[str]]:
    """(metadata rewrites that fix what differs, what cannot be fixed) for one read of the file."""
    md = found["metadata"]
    changes: dict[str, tuple[str, Any]] = {}
    if expected["chat_template"] is not None and md.get("tokenizer.chat_template") != expected["chat_template"]:
        changes["tokenizer.chat_template"] = ("string", expected["chat_template"])
    if expected["eos_id"] is not None and md.get("tokenizer.ggml.eos_token_id") != str(expected["eos_id"]):
        changes["tokenizer.ggml.eos_token_id"] = ("uint32", expected["eos_id"])
    if found["add_bos"] != expected["add_bos"]:
        changes["tokenizer.ggml.add_bos_token"] = ("bool", expected["add_bos"])
    # a SentencePiece vocabulary: llama.cpp puts "▁" before text unless told not to (Phi-3's converter never
    # says), then every turn's first word after a special token becomes another token than in HF
    if md.get("tokenizer.ggml.model") == "llama" and expected.get("space_prefix") is not None:
        if str(md.get("tokenizer.ggml.add_space_prefix", "true")).lower() != str(expected["space_prefix"]).lower():
            changes["tokenizer.ggml.add_space_prefix"] = ("bool", expected["space_prefix"])
    # llama.cpp ends generation at eos, eot, eom and tokens it knows by text; a free eot/eom slot takes the rest
    free = [k for k in ("tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id") if k not in md]
    unfixable = []
    for token in expected["stop_ids"]:
        if found["eog"].get(token) or token == expected["eos_id"]:
            continue
        if free:
            changes[free.pop(0)] = ("uint32", token)
        else:
            unfixable.append(f"{token} ({expected['tokens'].get(token)!r})")
    return changes, unfixable


def verify_and_fix(path: Path, expected: dict, log=print) -> list[str]:
    """Check the GGUF against `expected`; rewrite what differs; fail on what still does. Returns the
    rewritten keys."""
    found = read_gguf(path, expected["stop_ids"], expected["probe"])
    changes, unfixable = problems(expected, found)
    if unfixable:
        raise RuntimeError(
            f"{path.name}: generation_config eos token(s) {', '.join(unfixable)} would not end generation in "
            f"llama.cpp (it stops at eos, eot, eom and tokens it knows by text, and those slots are taken), so "
            f"llama.cpp and Ollama would run past the end of the answer. Make the stop token the tokenizer's "
            f"eos_token, or pass it as a stop string to the runtime.")
    if changes:
        log(f"fixing GGUF metadata: {', '.join(changes)}")
        rewrite_metadata(path, changes)
        found = read_gguf(path, expected["stop_ids"], expected["probe"])
        changes_left, _ = problems(expected, found)
        if changes_left:
            raise RuntimeError(f"{path.name}: metadata still differs from the HF folder after rewriting it: "
                               f"{', '.join(changes_left)}")
    _check_tokenization(path, expected, found, log)
    return sorted(changes)


def _check_tokenization(path: Path, expected: dict, found: dict, log) -> None:
    """The chat prompt must tokenize as in HF: a turn marker split into text pieces wrecks every answer."""
    want, got = expected["probe_ids"], found["probe_ids"]
    if want == got:
        return
    added = {int(i) for i in expected["added_tokens"]}
    at = next((i for i, (a, b) in enumerate(zip(want, got)) if a != b), min(len(want), len(got)))
    where = f"first difference at token {at}: HF {want[at:at + 6]} vs llama.cpp {got[at:at + 6]}"
    if [i for i in want if i in added] != [i for i in got if i in added]:
        raise RuntimeError(
            f"{path.name}: llama.cpp does not tokenize the chat template's special tokens as HF does ({where}; "
            f"prompt {expected['probe'][:120]!r}). The converter takes token types from tokenizer_config.json's "
            f"added_tokens_decoder and tokenizer.model; check that the HF folder's tokenizer lists them.")
    log(f"warning: llama.cpp tokenizes plain text differently from HF ({where}); outputs may differ")


_REWRITE = r"""
import json, sys
import gguf
from gguf.scripts.gguf_new_metadata import MetadataDetails, copy_with_new_metadata

src, dst = sys.argv[1], sys.argv[2]
kinds = {"string": gguf.GGUFValueType.STRING, "uint32": gguf.GGUFValueType.UINT32, "bool": gguf.GGUFValueType.BOOL}
changes = {key: MetadataDetails(kinds[kind], value) for key, (kind, value) in json.load(sys.stdin).items()}
reader = gguf.GGUFReader(src, "r")
writer = gguf.GGUFWriter(dst, arch=reader.get_field(gguf.Keys.General.ARCHITECTURE).contents(),
                         endianess=reader.endianess)
alignment = reader.get_field(gguf.Keys.General.ALIGNMENT)
if alignment is not None:
    writer.data_alignment = alignment.contents()
copy_with_new_metadata(reader, writer, changes, [])
"""


def rewrite_metadata(path: Path, changes: dict[str, tuple[str, Any]]) -> None:
    """Copy the GGUF with some key/values set (the vendored gguf-py's gguf_new_metadata approach);
    the copy replaces the file when complete."""
    folder = converter.converter_dir()
    tmp = path.with_name(f".{path.name}.rewrite")
    env = dict(os.environ, PYTHONPATH=str(folder / "gguf-py"), NO_LOCAL_GGUF="1")
    done = subprocess.run([sys.executable, "-c", _REWRITE, str(path), str(tmp)], input=json.dumps(changes),
                          capture_output=True, text=True, env=env)
    if done.returncode != 0 or not tmp.is_file():
        tmp.unlink(missing_ok=True)
        tail = "\n".join(done.stderr.strip().splitlines()[-6:])
        raise RuntimeError(f"rewriting the metadata of {path} failed:\n{tail}")
    tmp.replace(path)
