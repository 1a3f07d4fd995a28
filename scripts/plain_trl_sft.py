"""LoRA SFT written by hand with trl, the way its docs show it: SFTConfig, peft's LoraConfig, SFTTrainer.
scripts/bench_train.py runs it beside tunechain's SFT stage with the same settings; it also runs alone:

    python scripts/plain_trl_sft.py --model embedded/model --data embedded/data/sft_train.jsonl --max-steps 10

Loss on the assistant turns only. trl's `assistant_only_loss` needs `{% generation %}` markers that these
chat templates lack, so the script hands trl a pre-tokenized dataset (`input_ids` + `assistant_masks`, a
documented trl input) and builds the masks itself: an assistant turn is the text that rendering the chat
through that turn adds to rendering it up to the turn's opening (the template's generation prompt). That
is tunechain's rule too, for templates that render earlier turns the same way later (the embedded model,
SmolLM2, Llama 3). For a template that rewrites history (Qwen3 drops earlier think blocks), the script
stops and says so; `--masks tunechain` then imports tunechain's own pipeline.data.chat_tokens instead.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=str(ROOT / "embedded" / "model"), help="an HF model folder or hub id")
    p.add_argument("--data", default=str(ROOT / "embedded" / "data" / "sft_train.jsonl"),
                   help="jsonl, one {'messages': [...]} chat per line")
    p.add_argument("--limit", type=int, default=None, help="first N chats only")
    p.add_argument("--output-dir", default="plain-sft")
    p.add_argument("--result", default=None, help="write the run's numbers here as JSON")
    p.add_argument("--max-steps", type=int, default=300, help="-1: train --epochs instead")
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--grad-accum", type=int, default=1)
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--warmup", type=float, default=0.05, help="steps; < 1: a ratio of all steps")
    p.add_argument("--scheduler", default="cosine")
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--max-grad-norm", type=float, default=1.0)
    p.add_argument("--logging-steps", type=int, default=10)
    p.add_argument("--packing", action="store_true")
    p.add_argument("--padding-free", action="store_true", help="a batch as one row with position ids, no pad tokens")
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--full", action="store_true", help="full fine-tuning instead of LoRA")
    p.add_argument("--lora-r", type=int, default=16)
    p.add_argument("--lora-alpha", type=int, default=32)
    p.add_argument("--lora-dropout", type=float, default=0.0)
    p.add_argument("--target-modules", default="q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj",
                   help="comma-separated, or all-linear")
    p.add_argument("--dora", action="store_true")
    p.add_argument("--rslora", action="store_true")
    p.add_argument("--assistant-turns", choices=("all", "last"), default="all")
    p.add_argument("--masks", choices=("own", "tunechain"), default="own")
    p.add_argument("--dtype", default="float32", help="the weights' dtype: float32 | bfloat16 | float16")
    p.add_argument("--attn-implementation", default=None)
    p.add_argument("--enable-thinking", choices=("true", "false"), default=None,
                   help="passed to the chat template (Qwen3)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    return p.parse_args()


def read_chats(path: str, limit: int | None) -> list[list[dict]]:
    with open(path) as handle:
        chats = [json.loads(line)["messages"] for line in handle if line.strip()]
    return chats[:limit] if limit else chats


def tokenize(tokenizer, messages: list[dict], last_only: bool, template_kwargs: dict) -> dict:
    """input_ids of the rendered chat, and a mask that is 1 on the tokens of the trained assistant turns."""
    def render(turns, generation_prompt):
        return tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=generation_prompt,
                                             **template_kwargs)

    text = render(messages, False)
    replies = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    spans = []
    for i in replies[-1:] if last_only else replies:
        opening, through = render(messages[:i], True), render(messages[:i + 1], False)
        if not (text.startswith(through) and through.startswith(opening)):
            sys.exit("the chat template renders earlier turns differently later on: run with --masks tunechain")
        spans.append((len(opening), len(through)))  # the reply and its end-of-turn token
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    mask = [int(any(start <= begin < end for start, end in spans)) for begin, _ in encoded["offset_mapping"]]
    return {"input_ids": encoded["input_ids"], "assistant_masks": mask}


def main(args: argparse.Namespace) -> None:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, set_seed
    from trl import SFTConfig, SFTTrainer

    if args.threads:
        torch.set_num_threads(args.threads)
    set_seed(args.seed)  # SFTTrainer seeds again before it adds the LoRA weights

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    chats = read_chats(args.data, args.limit)
    if args.masks == "tunechain":  # tunechain's mask builder, for templates the rule above cannot handle
        sys.path.insert(0, str(ROOT))
        from pipeline.data.chat_tokens import tokenize_chats

        rows = tokenize_chats(tokenizer, [{"messages": m} for m in chats], args.assistant_turns)
    else:
        kwargs = {} if args.enable_thinking is None else {"enable_thinking": args.enable_thinking == "true"}
        rows = [tokenize(tokenizer, m, args.assistant_turns == "last", kwargs) for m in chats]
    if args.padding_free:  # trl leaves truncation to the caller when rows are padding-free
        rows = [{key: value[:args.max_length] for key, value in row.items()} for row in rows]
    dataset = Dataset.from_list(rows)

    on_gpu = torch.cuda.is_available()
    bf16 = on_gpu and torch.cuda.is_bf16_supported()
    config = SFTConfig(
        output_dir=args.output_dir, max_steps=args.max_steps, num_train_epochs=args.epochs, learning_rate=args.lr,
        per_device_train_batch_size=args.batch_size, gradient_accumulation_steps=args.grad_accum,
        max_length=None if args.padding_free else args.max_length, packing=args.packing,
        padding_free=args.padding_free, warmup_steps=args.warmup,
        lr_scheduler_type=args.scheduler, weight_decay=args.weight_decay, max_grad_norm=args.max_grad_norm,
        logging_steps=args.logging_steps, logging_first_step=True, seed=args.seed,
        # trl turns bf16 and activation checkpointing on by default; on a CPU both slow training down
        use_cpu=not on_gpu, bf16=bf16, fp16=on_gpu and not bf16,
        activation_checkpointing=args.gradient_checkpointing,
        save_strategy="no", report_to="none",  # the adapter is saved once, below
    )
    targets = args.target_modules if args.target_modules == "all-linear" else args.target_modules.split(",")
    peft_config = None if args.full else LoraConfig(
        r=args.lora_r, lora_alpha=args.lora_alpha, lora_dropout=args.lora_dropout, target_modules=targets,
        use_dora=args.dora, use_rslora=args.rslora, task_type="CAUSAL_LM")
    model_kwargs = {"dtype": getattr(torch, args.dtype)}
    if args.attn_implementation:
        model_kwargs["attn_implementation"] = args.attn_implementation
    model = AutoModelForCausalLM.from_pretrained(args.model, **model_kwargs)
    params = sum(p.numel() for p in model.parameters())

    trainer = SFTTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer,
                         peft_config=peft_config)
    started = time.time()
    result = trainer.train()
    runtime = time.time() - started
    trainer.save_model(args.output_dir)

    history = trainer.state.log_history
    losses = [(row["step"], row["loss"]) for row in history if "loss" in row]
    tokens = [row["num_tokens"] for row in history if "num_tokens" in row]  # trl's running count of input tokens
    numbers = {
        "train_loss": float(result.training_loss), "train_steps": int(result.global_step),
        "train_runtime": round(runtime, 2), "train_records": len(dataset), "params": params,
        "num_tokens": tokens[-1] if tokens else None, "losses": losses,
        "loss_first": losses[0][1] if losses else None, "loss_last": losses[-1][1] if losses else None,
        # the whole run's peak, weights included (tunechain measures from its stage's start, before loading)
        "peak_cuda_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1) if on_gpu else None,
    }
    print(f"loss {numbers['loss_first']} -> {numbers['loss_last']} in {numbers['train_steps']} steps, "
          f"train_loss {numbers['train_loss']:.4f}, {runtime:.1f}s")
    if args.result:
        Path(args.result).write_text(json.dumps(numbers))


if __name__ == "__main__":
    args = parse_args()
    main(args)
