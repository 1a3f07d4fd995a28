"""Measures what the embedded model is for: held-out math accuracy before and after a short LoRA SFT.

Run as (from the repository root, ~5 minutes on 2 CPU cores):
    python scripts/check_embedded.py
    python scripts/check_embedded.py --model embedded/model --data embedded/data --report embedded/check_metrics.json
Tiny smoke version (on a --quick build):
    python scripts/check_embedded.py --model /tmp/embedded_quick --data /tmp/embedded_quick/data --quick

1. Base model: greedy generation (batched, left padding, max_new_tokens 64, stops at <|im_end|> or </s>)
   from apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True) on
   test_math.jsonl; exact match of the number after the last '####' (else the last number in the output)
   with the number after '####' in the reference.
2. LoRA SFT with trl's SFTTrainer on sft_train.jsonl (records converted to conversational
   prompt/completion, so only the completion is trained), r=16, alpha=32, all linear projections.
3. The same evaluation with the adapter. Prints and writes overall / en / zh accuracy, stop and format
   rates, SFT steps and time. Also (not part of the requirement, a smoke signal for the other sets):
   format pass rate on test_instruct.jsonl and tool name + arguments match on test_tools.jsonl.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import time

NUM_RE = re.compile(r"-?\d+(?:\.\d+)?")


def extract_answer(text: str) -> str | None:
    """Number after the last '####', else the last number in the text (commas removed)."""
    text = text.replace(",", "")
    if "####" in text:
        m = NUM_RE.search(text.rsplit("####", 1)[1])
        if m:
            return m.group(0)
    nums = NUM_RE.findall(text)
    return nums[-1] if nums else None


def same_number(a: str | None, b: str | None) -> bool:
    if a is None or b is None:
        return False
    try:
        return abs(float(a) - float(b)) < 1e-6
    except ValueError:
        return False


def load_jsonl(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def evaluate_math(model, tok, rows, batch_size=50, max_new_tokens=64) -> dict:
    results = []
    outs = generate(model, tok, [r["question"] for r in rows], batch_size, max_new_tokens)
    for r, (text, stopped) in zip(rows, outs):
        pred, ref = extract_answer(text), r["answer"].rsplit("####", 1)[1].strip()
        results.append({"lang": r["lang"], "correct": same_number(pred, ref), "stopped": stopped,
                        "has_marker": "####" in text, "pred": pred, "ref": ref, "output": text})

    def acc(sel):
        sel = list(sel)
        return round(100.0 * sum(x["correct"] for x in sel) / max(1, len(sel)), 1)

    return {
        "accuracy": acc(results), "accuracy_en": acc(x for x in results if x["lang"] == "en"),
        "accuracy_zh": acc(x for x in results if x["lang"] == "zh"), "n": len(results),
        "stop_rate": round(100.0 * sum(x["stopped"] for x in results) / len(results), 1),
        "format_rate": round(100.0 * sum(x["has_marker"] for x in results) / len(results), 1),
        "samples": [{k: x[k] for k in ("lang", "output", "ref", "correct")} for x in results[:3] + results[-3:]],
    }


def check_instruct(output: str, check: dict) -> bool:
    """Scores one test_instruct output against its check (json_keys / word_count / list_items / question)."""
    out = output.strip()
    kind = check["type"]
    if kind == "json_keys":
        try:
            obj = json.loads(out)
        except ValueError:
            return False
        return isinstance(obj, dict) and sorted(obj) == sorted(check["keys"])
    if kind == "word_count":
        if check.get("unit") == "char":  # Chinese: CJK characters, punctuation not counted
            return sum(1 for ch in out if "\u4e00" <= ch <= "\u9fff") == check["n"]
        return len(out.split()) == check["n"]
    if kind == "list_items":
        lines = [ln for ln in out.split("\n") if ln.strip()]
        return len(lines) == check["n"] and all(re.match(rf"{i + 1}\.\s+\S", ln) for i, ln in enumerate(lines))
    if kind == "question":
        return out.endswith(("?", "？")) and "\n" not in out
    raise ValueError(kind)


TOOL_RE = re.compile(r"<tool_call>\s*(\{.*?\})\s*</tool_call>", re.DOTALL)


def check_tool(output: str, rec: dict) -> bool:
    """True when the output holds one tool call with the expected name and arguments."""
    m = TOOL_RE.search(output)
    if not m:
        return False
    try:
        call = json.loads(m.group(1))
    except ValueError:
        return False
    norm = lambda a: {k: " ".join(str(v).split()) for k, v in (a or {}).items()}  # noqa: E731
    return call.get("name") == rec["tool"] and norm(call.get("arguments")) == norm(rec["arguments"])


def generate(model, tok, prompts: list[str], batch_size=50, max_new_tokens=64) -> list[tuple[str, bool]]:
    """Greedy chat completions (left padding); returns (text up to the stop token, stopped)."""
    import torch

    tok.padding_side = "left"
    stop = [tok.convert_tokens_to_ids("<|im_end|>"), tok.convert_tokens_to_ids("</s>")]
    model.eval()
    res = []
    for i in range(0, len(prompts), batch_size):
        chat = [tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
                for p in prompts[i: i + batch_size]]
        enc = tok(chat, return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.no_grad():
            out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=stop,
                                 pad_token_id=tok.pad_token_id)
        for seq in out[:, enc["input_ids"].shape[1]:].tolist():
            stopped = any(s in seq for s in stop)
            if stopped:
                seq = seq[: min(seq.index(s) for s in stop if s in seq)]
            res.append((tok.decode(seq, skip_special_tokens=True), stopped))
    return res


def evaluate_other(model, tok, data_dir) -> dict:
    """Pass rates on test_instruct (format checks) and test_tools (tool name + arguments)."""
    ins = load_jsonl(os.path.join(data_dir, "test_instruct.jsonl"))
    tools = load_jsonl(os.path.join(data_dir, "test_tools.jsonl"))
    g_ins = generate(model, tok, [r["prompt"] for r in ins])
    g_tool = generate(model, tok, [r["prompt"] for r in tools])
    ok_ins = [check_instruct(o, r["check"]) for (o, _), r in zip(g_ins, ins)]
    ok_tool = [check_tool(o, r) for (o, _), r in zip(g_tool, tools)]
    by_type = {}
    for ok, r in zip(ok_ins, ins):
        by_type.setdefault(r["check"]["type"], []).append(ok)
    pct = lambda xs: round(100.0 * sum(xs) / max(1, len(xs)), 1)  # noqa: E731
    return {"instruct_pass": pct(ok_ins), "instruct_by_type": {k: pct(v) for k, v in by_type.items()},
            "tool_call_match": pct(ok_tool), "n_instruct": len(ins), "n_tools": len(tools),
            "failures": [{"prompt": r["prompt"], "output": o} for (o, _), r, ok in
                         list(zip(g_ins, ins, ok_ins)) + list(zip(g_tool, tools, ok_tool)) if not ok][:40]}


def to_prompt_completion(rec):
    msgs = rec["messages"]
    return {"prompt": msgs[:-1], "completion": msgs[-1:]}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="embedded/model")
    ap.add_argument("--data", default="embedded/data")
    ap.add_argument("--report", default=None, help="JSON report path (default: print only)")
    ap.add_argument("--max-steps", type=int, default=300)
    ap.add_argument("--max-seconds", type=float, default=180.0, help="stop SFT after this much time")
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--alpha", type=int, default=32)
    ap.add_argument("--n-test", type=int, default=None, help="evaluate on the first N test records")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-other", action="store_true", help="only test_math (no test_instruct / test_tools)")
    ap.add_argument("--quick", action="store_true", help="a few SFT steps, 10 test records")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    if args.quick:
        args.max_steps, args.n_test = 5, 10
    t_all = time.time()
    tok = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    test = load_jsonl(os.path.join(args.data, "test_math.jsonl"))
    if args.n_test:
        half = args.n_test // 2  # keep both languages
        test = [r for r in test if r["lang"] == "en"][:half] + [r for r in test if r["lang"] == "zh"][:args.n_test - half]

    t = time.time()
    base = evaluate_math(model, tok, test)
    base["eval_seconds"] = round(time.time() - t, 1)
    print(f"BASE   accuracy {base['accuracy']:5.1f}%  (en {base['accuracy_en']:.1f}, zh {base['accuracy_zh']:.1f})  "
          f"stop {base['stop_rate']:.0f}%  '####' {base['format_rate']:.0f}%  [{base['eval_seconds']}s]")
    for s in base["samples"][:2]:
        print("  base output:", repr(s["output"][:160]), "ref", s["ref"])
    if not args.skip_other:
        base.update(evaluate_other(model, tok, args.data))
        print(f"BASE   instruct format pass {base['instruct_pass']}%  tool call match {base['tool_call_match']}%")

    train = Dataset.from_list([to_prompt_completion(r) for r in load_jsonl(os.path.join(args.data, "sft_train.jsonl"))])
    cfg = SFTConfig(
        output_dir=os.path.join("/tmp", f"check_embedded_{os.getpid()}"), max_steps=args.max_steps,
        per_device_train_batch_size=args.batch_size, learning_rate=args.lr, lr_scheduler_type="cosine",
        warmup_steps=max(1, args.max_steps // 20), weight_decay=0.0, max_length=256,
        logging_steps=max(1, args.max_steps // 10), save_strategy="no", report_to="none", seed=args.seed,
        use_cpu=True, bf16=False, fp16=False, gradient_checkpointing=False, optim="adamw_torch",
        dataloader_num_workers=0, disable_tqdm=True,
    )
    lora = LoraConfig(r=args.rank, lora_alpha=args.alpha, lora_dropout=0.0, task_type="CAUSAL_LM",
                      target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])

    class TimeLimit(TrainerCallback):
        def on_step_end(self, a, state, control, **kw):
            if time.time() - t_sft > args.max_seconds:
                control.should_training_stop = True

    trainer = SFTTrainer(model=model, args=cfg, train_dataset=train, processing_class=tok, peft_config=lora,
                         callbacks=[TimeLimit()])
    n_trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    t_sft = time.time()
    result = trainer.train()
    sft_seconds = round(time.time() - t_sft, 1)
    steps = trainer.state.global_step
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    print(f"SFT    {steps} steps in {sft_seconds}s ({steps / sft_seconds:.2f} steps/s), batch {args.batch_size}, "
          f"lr {args.lr}, LoRA r={args.rank} alpha={args.alpha}, {n_trainable:,} trainable params, "
          f"loss {losses[0] if losses else float('nan'):.3f} -> {result.training_loss:.3f} (mean) / "
          f"{losses[-1] if losses else float('nan'):.3f} (last log)")

    t = time.time()
    tuned = evaluate_math(trainer.model, tok, test)
    tuned["eval_seconds"] = round(time.time() - t, 1)
    print(f"TUNED  accuracy {tuned['accuracy']:5.1f}%  (en {tuned['accuracy_en']:.1f}, zh {tuned['accuracy_zh']:.1f})  "
          f"stop {tuned['stop_rate']:.0f}%  '####' {tuned['format_rate']:.0f}%  [{tuned['eval_seconds']}s]")
    for s in tuned["samples"][:2] + tuned["samples"][-2:]:
        print("  tuned output:", repr(s["output"][:160]), "ref", s["ref"], "ok" if s["correct"] else "WRONG")
    if not args.skip_other:
        tuned.update(evaluate_other(trainer.model, tok, args.data))
        print(f"TUNED  instruct format pass {tuned['instruct_pass']}% {tuned['instruct_by_type']}  "
              f"tool call match {tuned['tool_call_match']}%")
    gain = tuned["accuracy"] - base["accuracy"]
    print(f"GAIN   {gain:+.1f} points (required: +30; total {time.time() - t_all:.0f}s)")
    report = {
        "model": args.model, "test_records": len(test), "base": base, "tuned": tuned, "gain_points": round(gain, 1),
        "sft": {"steps": steps, "seconds": sft_seconds, "batch_size": args.batch_size, "learning_rate": args.lr,
                "lr_scheduler": "cosine", "warmup_steps": cfg.warmup_steps, "max_length": 256,
                "lora": {"r": args.rank, "alpha": args.alpha, "dropout": 0.0, "targets": lora.target_modules and
                         sorted(lora.target_modules)},
                "trainable_params": n_trainable, "train_records": len(train), "loss_log": losses,
                "mean_train_loss": round(result.training_loss, 4), "threads": args.threads},
        "total_seconds": round(time.time() - t_all, 1),
    }
    if args.report:
        with open(args.report, "w", encoding="utf-8") as f:
            json.dump(report, f, ensure_ascii=False, indent=1)
    return report


if __name__ == "__main__":
    main()
