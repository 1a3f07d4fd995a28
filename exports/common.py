"""What the quantizing exports share: which stage kinds leave quantized checkpoints, the refusal to
quantize one again, and the checks a bnb or GPTQ folder goes through after saving (sizes, a reload
with from_pretrained alone, next-token agreement with the source)."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, List, Optional

from exports.parity import ParityFields
from pipeline.artifact import Artifact, ArtifactKind, weight_bytes
from pipeline.data.datasets import load
from pipeline.errors import ConfigError, PlanError
from pipeline.models.loading import load_causal_lm, local_folder, model_class

# Stage kinds whose checkpoints are quantized: they cannot be quantized again, and llama.cpp's
# converter cannot read them.
QUANTIZED_KINDS = ("bnb", "gptq", "compressed")


def refuse_quantized_input(where: str, inputs: Optional[List[str]], earlier: dict) -> None:
    """A bnb or GPTQ checkpoint cannot be quantized again: name the stage to read instead."""
    if inputs:
        step = earlier.get(inputs[0])
    else:  # the planner's rule: the latest earlier stage that produces a model (none: the base model)
        step = next((s for s in reversed(list(earlier.values())) if s.output_kind == ArtifactKind.model), None)
    if step is not None and step.kind in QUANTIZED_KINDS:
        before = step.input_names[0] if getattr(step, "input_names", None) else "base"
        raise ConfigError(f"{where}.inputs: '{step.name}' is already a {step.kind}-quantized checkpoint and cannot be "
                          f"quantized again; quantize its own input instead with `inputs: [{before}]`")


def size_metrics(source: Artifact, out_dir: Path) -> dict[str, Any]:
    size, source_size = (round(weight_bytes(f) / 2**20, 3) or None for f in (out_dir, local_folder(source.path)))
    return {"size_mb": size, "source_size_mb": source_size,
            "compression_ratio": round(source_size / size, 3) if size and source_size else None}


def probe_texts(cfg: ParityFields, tokenizer, limit: int = 8) -> list[str]:
    """Teacher-forced chats (question and reference answer) from the parity prompts; a fixed line
    when parity is off."""
    if not cfg.parity:
        return ["12 * 3 = 36"]
    records = load(cfg.parity_prompts, "gsm8k")[:limit]
    if not tokenizer.chat_template:
        return [f"{r['question']}\n{r['answer']}" for r in records]
    return [tokenizer.apply_chat_template([{"role": "user", "content": r["question"]},
                                           {"role": "assistant", "content": r["answer"]}], tokenize=False)
            for r in records]


def calibration_batches(cfg: Any, tokenizer, log) -> list[dict[str, list[int]]]:
    """The first n_samples chats of cfg.calibration (a stage config with n_samples and max_seq_len), rendered with the chat template and cut to max_seq_len tokens."""
    records = load(cfg.calibration, "sft")[:cfg.n_samples]
    if not tokenizer.chat_template:
        log("warning: the tokenizer has no chat template; calibrating on the chats' contents joined by newlines")
    batches = []
    for record in records:
        if tokenizer.chat_template:
            text = tokenizer.apply_chat_template(record["messages"], tokenize=False)
        else:
            text = "\n".join(m["content"] for m in record["messages"])
        ids = tokenizer(text, add_special_tokens=False, truncation=True, max_length=cfg.max_seq_len)["input_ids"]
        batches.append({"input_ids": ids, "attention_mask": [1] * len(ids)})
    return batches


def _next_token_ids(model, tokenizer, texts: list[str], device: str, shape_of: list) -> list:
    import torch

    found = []
    for text in texts:
        ids = tokenizer(text, return_tensors="pt", add_special_tokens=False, truncation=True, max_length=256)
        ids = {k: v.to(device if device == "cuda" else "cpu") for k, v in ids.items()}
        with torch.inference_mode():
            logits = model(**ids).logits
        if not torch.isfinite(logits.float()).all():
            raise PlanError(f"{getattr(model, 'name_or_path', 'model')}: non-finite logits for {text[:60]!r}")
        shape_of.append(tuple(logits.shape))
        found.append(logits[0].argmax(-1).cpu())
    return found


def reload_check(folder: Path, source: Artifact, ctx, is_quantized: Callable[[Any], bool], expected: str,
                 texts: list[str]) -> dict[str, Any]:
    """Load `folder` with from_pretrained alone (no quantization arguments): its linear layers must be
    quantized, and one forward per text must give the source's logits shape. Also reports how often
    both models pick the same next token on those texts (teacher-forced, so one early difference
    does not hide the rest, unlike greedy parity)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    reference = load_causal_lm(source, ctx.model, ctx.device).eval()
    want_shapes: list = []
    want = _next_token_ids(reference, tokenizer, texts, ctx.device, want_shapes)
    del reference

    started = time.time()
    kwargs = {"device_map": {"": 0}} if ctx.device == "cuda" else {}
    model = model_class(str(folder), ctx.model).from_pretrained(str(folder), **kwargs).eval()
    seconds = round(time.time() - started, 2)
    classes = sorted({type(m).__name__ for m in model.modules() if is_quantized(m)})
    if not classes:
        raise PlanError(f"{folder}: reloaded with from_pretrained alone, but no layer is quantized (expected "
                        f"{expected}); the quantization config saved in config.json was not honoured")
    got_shapes: list = []
    got = _next_token_ids(model, tokenizer, texts, ctx.device, got_shapes)
    del model
    if got_shapes != want_shapes:
        raise PlanError(f"{folder}: the reloaded model's logits have shapes {got_shapes[:2]}, the source's "
                        f"{want_shapes[:2]}")
    same = sum(int((a == b).sum()) for a, b in zip(want, got))
    positions = sum(len(a) for a in want)
    return {"reload_seconds": seconds, "reloaded_layers": classes,
            "reload_top1_agreement": round(same / max(positions, 1), 4), "reload_positions": positions}
