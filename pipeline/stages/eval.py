"""Evaluation: held-out arithmetic accuracy (batched greedy generation, answer extraction,
exact match) and perplexity on held-out text, for the base model or any trained artifact.

    python main.py recipe=quickstart stages.eval_tuned.limit=50
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import List, Optional

from omegaconf import MISSING

from ..artifacts import Artifact
from ..context import Inputs, StageContext
from ..data import DatasetSpec, load
from ..errors import ConfigError
from ..metrics import extract_answer, perplexity
from ..registry import stage
from ..training import tokenizer_source

TASKS = ("math", "perplexity")


@dataclass
class EvalConfig:
    kind: str = "eval"
    inputs: Optional[List[str]] = None          # default: the latest earlier model or adapter
    tasks: List[str] = field(default_factory=lambda: ["math", "perplexity"])
    math: DatasetSpec = field(default=MISSING, metadata={"purpose": "gsm8k"})
    text: DatasetSpec = field(default=MISSING, metadata={"purpose": "text"})
    limit: Optional[int] = None                 # evaluate the first N records of each task
    batch_size: int = 32
    max_new_tokens: int = 64
    dtype: Optional[str] = None                 # null: the model config's dtype
    compare_with: Optional[str] = None          # an earlier eval stage: the report shows the deltas

    def validate(self, where: str, earlier: dict) -> None:
        unknown = [t for t in self.tasks if t not in TASKS]
        if unknown:
            raise ConfigError(f"{where}.tasks: unknown task(s) {unknown}; valid: {', '.join(TASKS)}")
        if self.compare_with is not None:
            other = earlier.get(self.compare_with)
            if other is None or other.kind != "eval":
                evals = [n for n, s in earlier.items() if s.kind == "eval"]
                raise ConfigError(f"{where}.compare_with: '{self.compare_with}' is not an earlier eval stage; "
                                  f"choose from: {', '.join(evals) or '(none)'}")

    def memory_profile(self) -> str:
        return "inference"


@stage("eval", config=EvalConfig, consumes={"model", "adapter"}, produces="eval")
def run(cfg: EvalConfig, inputs: Inputs, ctx: StageContext) -> Artifact:
    """Score the input model; results go in the artifact (results.json, predictions.jsonl)."""
    import torch

    from ..models import load_causal_lm, load_tokenizer

    source = inputs.primary
    tokenizer = load_tokenizer(tokenizer_source(source), ctx.model, padding_side="left")
    started = time.time()
    model = load_causal_lm(source, ctx.model, ctx.device, cfg.dtype, merge_adapter=True).eval()
    metrics = {"load_seconds": round(time.time() - started, 2)}
    with torch.inference_mode():
        if "math" in cfg.tasks:
            metrics.update(_math(cfg, model, tokenizer, ctx))
        if "perplexity" in cfg.tasks:
            metrics.update(_perplexity(cfg, model, tokenizer, ctx))
    metrics["seconds"] = round(time.time() - started, 2)
    (ctx.out_dir / "results.json").write_text(json.dumps(metrics, indent=2) + "\n")
    summary = ", ".join(f"{k} {v}" for k, v in metrics.items() if k in ("math_accuracy", "perplexity"))
    ctx.log(summary)
    ctx.tracker.log(ctx.name, metrics)
    return Artifact(kind="eval", path=str(ctx.out_dir), fingerprint="", format="eval-report",
                    base_model=source.base_model, metrics=metrics, meta={"evaluated": source.path})


def _limited(records: list, limit: int | None) -> list:
    return records[:limit] if limit else records


def generate(model, tokenizer, prompts: list[str], batch_size: int, max_new_tokens: int, device: str) -> list[str]:
    """Batched greedy generation with left padding; returns the new text of each prompt."""
    outputs = []
    for start in range(0, len(prompts), batch_size):
        batch = tokenizer(prompts[start:start + batch_size], return_tensors="pt", padding=True,
                          add_special_tokens=False).to(device)
        generated = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False,
                                   pad_token_id=tokenizer.pad_token_id)
        new_tokens = generated[:, batch["input_ids"].shape[1]:]
        outputs += tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
    return outputs


def chat_prompt(tokenizer, question: str) -> str:
    return tokenizer.apply_chat_template([{"role": "user", "content": question}], tokenize=False,
                                         add_generation_prompt=True)


def _math(cfg: EvalConfig, model, tokenizer, ctx: StageContext) -> dict:
    records = _limited(load(cfg.math, "gsm8k"), cfg.limit)
    started = time.time()
    outputs = generate(model, tokenizer, [chat_prompt(tokenizer, r["question"]) for r in records],
                       cfg.batch_size, cfg.max_new_tokens, ctx.device)
    seconds = time.time() - started
    correct = 0
    with open(ctx.out_dir / "predictions.jsonl", "w") as handle:
        for record, output in zip(records, outputs):
            predicted = extract_answer(output)
            ok = predicted == record["target"]
            correct += ok
            handle.write(json.dumps({"question": record["question"], "target": record["target"], "output": output,
                                     "predicted": predicted, "correct": ok}, ensure_ascii=False) + "\n")
    return {"math_accuracy": round(correct / len(records), 4), "math_correct": correct, "math_n": len(records),
            "prompts_per_s": round(len(records) / seconds, 2)}


def _perplexity(cfg: EvalConfig, model, tokenizer, ctx: StageContext) -> dict:
    import torch

    texts = [r["text"] for r in _limited(load(cfg.text, "text"), cfg.limit)]
    total_nll, n_tokens = 0.0, 0
    tokenizer.padding_side = "right"
    for start in range(0, len(texts), cfg.batch_size):
        batch = tokenizer(texts[start:start + cfg.batch_size], return_tensors="pt", padding=True,
                          truncation=True, max_length=1024).to(ctx.device)
        logits = model(**batch).logits[:, :-1].float()
        targets = batch["input_ids"][:, 1:]
        mask = batch["attention_mask"][:, 1:].bool()
        nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), targets, reduction="none")
        total_nll += float(nll[mask].sum())
        n_tokens += int(mask.sum())
    tokenizer.padding_side = "left"
    return {"perplexity": round(perplexity(total_nll, n_tokens), 4), "perplexity_tokens": n_tokens}
