"""Batched evaluation vs the seed's one-prompt-at-a-time loop, same model, same prompts, same
greedy settings: prints prompts/s of each and the ratio.

    python scripts/bench_batched_eval.py [--model embedded/model] [--n 64] [--batch-size 32]

The seed lab (000) calls generate() once per prompt; tunechain's eval (pipeline/backends/base.py)
left-pads a batch and generates it at once.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(ROOT / "embedded" / "model"))
    parser.add_argument("--data", default=str(ROOT / "embedded" / "data" / "test_math.jsonl"))
    parser.add_argument("--n", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    args = parser.parse_args()

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pipeline.backends.base import chat_prompt
    from pipeline.backends.hf import hf_generate
    from pipeline.data.datasets import DatasetSpec, load

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(args.model).eval()
    records = load(DatasetSpec(path=args.data, format="gsm8k"), "gsm8k")[:args.n]
    prompts = [chat_prompt(tokenizer, r["question"]) for r in records]

    started = time.perf_counter()
    looped = hf_generate(model, tokenizer, prompts, 1, args.max_new_tokens, "cpu")  # the seed's loop
    loop_s = time.perf_counter() - started
    started = time.perf_counter()
    batched = hf_generate(model, tokenizer, prompts, args.batch_size, args.max_new_tokens, "cpu")
    batch_s = time.perf_counter() - started

    same = sum(a.token_ids == b.token_ids for a, b in zip(looped, batched))
    print(f"model {args.model}, {len(prompts)} prompts, {args.max_new_tokens} new tokens, greedy")
    print(f"one at a time: {len(prompts) / loop_s:8.2f} prompts/s ({loop_s:.1f} s)")
    print(f"batched ({args.batch_size}):  {len(prompts) / batch_s:8.2f} prompts/s ({batch_s:.1f} s)")
    print(f"speed-up: {loop_s / batch_s:.1f}x; identical outputs: {same}/{len(prompts)}")


if __name__ == "__main__":
    main()
