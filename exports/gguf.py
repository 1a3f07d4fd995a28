"""Export to GGUF for llama.cpp and Ollama, with the stop tokens and chat template checked.

    python main.py recipe=lora_merge +stage@stages.gguf=gguf stages.gguf.quant=q4_k_m

An adapter input is merged into its base first. llama.cpp's own converter (from the sdist of the
installed llama-cpp-python, see exports/llamacpp.py) writes the target type directly when it can
(f32, f16, bf16, q8_0); other types are quantized from an f32/f16/bf16 file. The result is then
read back through llama.cpp and compared with the HF folder: chat template, eos id, add_bos, and
every generation_config eos id must end generation in llama.cpp. A missing or different value is
rewritten into the file (gguf-py, as its gguf_new_metadata script does); what cannot be fixed fails
the stage, because a GGUF that never emits a stop token runs on forever in llama.cpp and Ollama.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, List, Optional

from exports import llamacpp
from exports.parity import ParityFields
from pipeline.engine.artifacts import Artifact, weight_bytes
from pipeline.engine.context import Inputs, StageContext
from pipeline.engine.registry import stage
from pipeline.errors import ConfigError, PlanError

QUANTIZED_KINDS = ("bnb", "gptq")  # stages whose checkpoints llama.cpp's converter cannot read
MODEL_KINDS = ("model", "adapter")
PROBE_CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 12 + 30?"},
              {"role": "assistant", "content": "42"}, {"role": "user", "content": "And 7 * 6?"}]


@dataclass
class GGUFConfig(ParityFields):
    kind: str = "gguf"
    inputs: Optional[List[str]] = None   # default: the latest earlier model or adapter
    quant: str = "q8_0"                  # one of exports.llamacpp.QUANT_TYPES
    modelfile: bool = True               # write an Ollama Modelfile beside the .gguf
    keep_intermediate: bool = False      # keep the f32/f16/bf16 GGUF a quantized type is made from

    def validate(self, where: str, earlier: dict) -> None:
        if self.quant not in llamacpp.QUANT_TYPES:
            hint = f" (lower case: '{self.quant.lower()}')" if self.quant.lower() in llamacpp.QUANT_TYPES else ""
            raise ConfigError(f"{where}.quant: unknown GGUF type '{self.quant}'{hint}; valid: "
                              f"{', '.join(llamacpp.QUANT_TYPES)}")
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

    def check_device(self, where: str, device: str) -> None:
        try:
            import llama_cpp  # noqa: F401
        except ImportError as e:
            raise PlanError(f"{where}: GGUF export needs llama-cpp-python: pip install -e '.[gguf]' "
                            f"(it compiles llama.cpp: 7-13 minutes on 2 cores, once) [{e}]") from None
        try:
            llamacpp.converter_dir()
        except PlanError as e:
            raise PlanError(f"{where}: {e}") from None



def is_k_quant(quant: str) -> bool:
    return "_k" in quant


def k_quant_fallbacks(config: dict) -> dict[str, int]:
    """Row sizes that are not a multiple of K_QUANT_BLOCK; llama.cpp quantizes those tensors with a
    fallback type (q5_0, q8_0, ...) instead of the k-quant asked for."""
    sizes = {k: config.get(k) for k in ("hidden_size", "intermediate_size", "moe_intermediate_size")}
    return {k: v for k, v in sizes.items() if isinstance(v, int) and v % llamacpp.K_QUANT_BLOCK}


def source_dtype(config: dict) -> str:
    return str(config.get("dtype") or config.get("torch_dtype") or "float32")


def intermediate_type(dtype: str) -> str:
    """The lossless converter outtype that a quantized type is made from."""
    return {"bfloat16": "bf16", "float16": "f16"}.get(dtype, "f32")


@stage("gguf", config=GGUFConfig, consumes=set(MODEL_KINDS), produces="gguf")
def run(cfg: GGUFConfig, inputs: Inputs, ctx: StageContext) -> Artifact:
    """Convert the input model (an adapter is merged first) to a checked GGUF and an Ollama Modelfile."""
    source = inputs.primary
    merged_dir, staged_dir = ctx.out_dir / "merged-hf", ctx.out_dir / "converter-src"
    meta: dict[str, Any] = {"quant": cfg.quant, "merged": source.kind == "adapter"}
    metrics: dict[str, Any] = {}
    try:
        if source.kind == "adapter":
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
        expected = hf_expectations(hf_dir, ctx)
        convert_dir, meta["tokenizer_config_patched"] = converter_folder(hf_dir, expected, staged_dir)
        out_file = _build(cfg, convert_dir, config, meta, ctx)
        ctx.log(f"converted {hf_dir} to {meta['converter_outtype']}"
                + (f", quantized to {cfg.quant}" if cfg.quant != meta["converter_outtype"] else ""))
        meta["metadata_fixed"] = verify_and_fix(out_file, expected, ctx.log)
        metrics["convert_seconds"] = round(time.time() - started, 2)
        meta.update(file=out_file.name, chat_template_present=expected["chat_template"] is not None,
                    eos_token=expected["eos_text"], eos_token_id=expected["eos_id"],
                    stop_tokens=[expected["tokens"][i] for i in expected["stop_ids"]],
                    stop_token_ids=expected["stop_ids"], add_bos=expected["add_bos"])

        from exports.modelfile import template_style, write

        meta["template_style"] = template_style(expected["chat_template"])
        meta["default_system"] = expected["default_system"]
        if cfg.modelfile:
            write(ctx.out_dir, out_file.name, expected["chat_template"], meta["stop_tokens"],
                  title=f"{ctx.model.name} ({cfg.quant})", system=expected["default_system"],
                  generation_prompt=expected["generation_prompt"])

        gguf_bytes, source_bytes = out_file.stat().st_size, weight_bytes(hf_dir)
        metrics.update(size_mb=round(gguf_bytes / 2**20, 2), source_size_mb=round(source_bytes / 2**20, 2),
                       compression_ratio=round(source_bytes / gguf_bytes, 3) if source_bytes else None)
        exported = Artifact(kind="gguf", path=str(ctx.out_dir), fingerprint="", format=f"gguf-{cfg.quant}",
                            base_model=source.base_model or source.path, meta={"file": out_file.name})
        from exports.parity import compare_with_source

        metrics.update(compare_with_source(cfg, hf_source, exported, ctx))
    finally:
        shutil.rmtree(staged_dir, ignore_errors=True)
        shutil.rmtree(merged_dir, ignore_errors=True)
    ctx.log(f"{out_file.name}: {metrics['size_mb']} MB (safetensors {metrics['source_size_mb']} MB), "
            f"chat template {'kept' if meta['chat_template_present'] else 'absent'}, stops at {meta['stop_tokens']}")
    return Artifact(kind="gguf", path=str(ctx.out_dir), fingerprint="", format=f"gguf-{cfg.quant}",
                    base_model=source.base_model or source.path, metrics=metrics, meta=meta)


def _merge(adapter: Artifact, ctx: StageContext, out_dir: Path) -> dict:
    from exports.merge import merge_adapter

    out_dir.mkdir(parents=True, exist_ok=True)
    found = merge_adapter(adapter, ctx, out_dir)
    ctx.log(f"merged adapter {adapter.path} into the {found.get('merged_into')} of {adapter.base_model}")
    return {k: v for k, v in found.items() if k != "params"}


def _local_folder(artifact: Artifact, ctx: StageContext) -> Path:
    """The HF folder on disk (a hub base model is fetched into the HF cache)."""
    from pipeline.models.loading import local_folder

    folder = local_folder(artifact.path)
    if folder is not None:
        return folder
    from huggingface_hub import snapshot_download

    revision = ctx.model.revision if artifact.path == ctx.model.path else None
    return Path(snapshot_download(artifact.path, revision=revision,
                                  allow_patterns=["*.json", "*.safetensors", "*.model", "*.jinja", "*.txt",
                                                  "*.tiktoken"]))


def _build(cfg: GGUFConfig, hf_dir: Path, config: dict, meta: dict, ctx: StageContext) -> Path:
    """Convert (and quantize); returns ctx.out_dir/model-<quant>.gguf."""
    out_file = ctx.out_dir / f"model-{cfg.quant}.gguf"
    if cfg.quant in llamacpp.CONVERTER_TYPES:
        meta["converter_outtype"] = cfg.quant
        llamacpp.convert(hf_dir, out_file, cfg.quant, ctx.model.name)
        return out_file
    outtype = intermediate_type(meta["source_dtype"])
    meta["converter_outtype"] = outtype
    if is_k_quant(cfg.quant):
        fallbacks = k_quant_fallbacks(config)
        if fallbacks:
            meta["k_quant_fallback"] = fallbacks
            sizes = ", ".join(f"{k} {v}" for k, v in fallbacks.items())
            ctx.log(f"warning: {sizes}: not multiples of {llamacpp.K_QUANT_BLOCK}: llama.cpp quantizes those "
                    f"tensors with a fallback type instead of {cfg.quant} (a larger file, other quality)")
    intermediate = ctx.out_dir / f"model-{outtype}.gguf"
    llamacpp.convert(hf_dir, intermediate, outtype, ctx.model.name)
    llamacpp.quantize(intermediate, out_file, cfg.quant)
    if cfg.keep_intermediate:
        meta["intermediate"] = intermediate.name
    else:
        intermediate.unlink()
    return out_file


# ---------------------------------------------------------------------------------------------
# What the GGUF must say, read from the HF folder, and the check against what llama.cpp reads.

def hf_expectations(hf_dir: Path, ctx: StageContext) -> dict:
    """Chat template, eos, add_bos and stop ids as the HF tokenizer and generation_config give them."""
    from pipeline.models.loading import load_tokenizer

    tok = load_tokenizer(str(hf_dir), ctx.model)
    stop_ids = []
    generation = hf_dir / "generation_config.json"
    if generation.is_file():
        eos = json.loads(generation.read_text()).get("eos_token_id")
        stop_ids = list(eos) if isinstance(eos, list) else [eos] if eos is not None else []
    if tok.eos_token_id is not None and tok.eos_token_id not in stop_ids:
        stop_ids.insert(0, tok.eos_token_id)
    probe = tok("a")["input_ids"]
    add_bos = tok.bos_token_id is not None and probe[:1] == [tok.bos_token_id]
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
            "add_bos": bool(add_bos), "stop_ids": [int(i) for i in stop_ids],
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

    found = llamacpp.metadata(path)
    with llamacpp.open_vocab(path) as model:
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
    _check_tokenization(path, expected, found, log)
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
        changes_left, _ = problems(expected, read_gguf(path, expected["stop_ids"]))
        if changes_left:
            raise RuntimeError(f"{path.name}: metadata still differs from the HF folder after rewriting it: "
                               f"{', '.join(changes_left)}")
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
    folder = llamacpp.converter_dir()
    tmp = path.with_name(f".{path.name}.rewrite")
    env = dict(os.environ, PYTHONPATH=str(folder / "gguf-py"), NO_LOCAL_GGUF="1")
    done = subprocess.run([sys.executable, "-c", _REWRITE, str(path), str(tmp)], input=json.dumps(changes),
                          capture_output=True, text=True, env=env)
    if done.returncode != 0 or not tmp.is_file():
        tmp.unlink(missing_ok=True)
        tail = "\n".join(done.stderr.strip().splitlines()[-6:])
        raise RuntimeError(f"rewriting the metadata of {path} failed:\n{tail}")
    tmp.replace(path)
