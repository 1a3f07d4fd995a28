"""Measures what the embedded VLM is for: held-out VQA and POPE before and after a short LoRA SFT.

Run as (from the repository root, ~6 minutes on 2 CPU cores):
    python scripts/check_embedded_vlm.py --report embedded/vlm/check_metrics.json
Tiny smoke version (on a --quick build):
    python scripts/check_embedded_vlm.py --model /tmp/embedded_vlm_quick --data /tmp/embedded_vlm_quick/data --quick

1. Base model: greedy generation (batched, left padding, stops at <|im_end|>) from the chat prompt on
   test_vqa.jsonl (exact match after lowercasing and stripping punctuation, per type) and test_pope.jsonl
   (answer = first word yes/no; accuracy, precision, recall, F1 with 'yes' positive, yes-ratio, per setting).
2. LoRA SFT with trl's SFTTrainer on sft_train.jsonl as prompt/completion rows with the image
   (trl's DataCollatorForVisionLanguageModeling): r=16, alpha=32 on the language model's
   q/k/v/o/gate/up/down projections; the vision tower and connector stay frozen.
3. The same evaluation with the adapter.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import resource
import string
import time

LORA_TARGETS = r".*text_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"


def load_jsonl(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def normalize(text: str) -> str:
    return re.sub(r"\s+", " ", text.lower().translate(str.maketrans("", "", string.punctuation))).strip()


def split_prompt(messages, data_dir):
    """(messages with bare {"type": "image"} placeholders, the PIL images in order)."""
    from PIL import Image

    images, out = [], []
    for m in messages:
        content = m["content"]
        if isinstance(content, list):
            parts = []
            for p in content:
                if p["type"] == "image":
                    images.append(Image.open(os.path.join(data_dir, p["image"])).convert("RGB"))
                    parts.append({"type": "image"})
                else:
                    parts.append(p)
            content = parts
        out.append({"role": m["role"], "content": content})
    return out, images


def generate(model, proc, prompts, data_dir, batch_size=50, max_new_tokens=6):
    import torch

    outs = []
    for i in range(0, len(prompts), batch_size):
        chunk = [split_prompt(p, data_dir) for p in prompts[i:i + batch_size]]
        texts = [proc.apply_chat_template(m, add_generation_prompt=True) for m, _ in chunk]
        enc = proc(text=texts, images=[ims for _, ims in chunk], padding=True, padding_side="left", return_tensors="pt")
        with torch.no_grad():
            g = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False)
        outs += proc.tokenizer.batch_decode(g[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    return outs


def evaluate(model, proc, vqa, pope, data_dir) -> dict:
    outs = generate(model, proc, [r["prompt"] for r in vqa], data_dir)
    per_type: dict[str, list[bool]] = {}
    for r, o in zip(vqa, outs):
        per_type.setdefault(r["type"], []).append(normalize(o) == normalize(r["answer"]))
    allv = [x for v in per_type.values() for x in v]
    res = {"vqa_accuracy": round(100 * sum(allv) / len(allv), 1),
           "vqa_per_type": {k: round(100 * sum(v) / len(v), 1) for k, v in sorted(per_type.items())},
           "vqa_samples": [{"q": r["prompt"][0]["content"][1]["text"], "ref": r["answer"], "out": o}
                           for r, o in list(zip(vqa, outs))[:8]]}
    pouts = generate(model, proc, [r["prompt"] for r in pope], data_dir, max_new_tokens=3)
    res["pope"] = {}
    for setting in ("random", "popular", "adversarial"):
        sel = [(r["answer"] == "yes", normalize(o).startswith("yes")) for r, o in zip(pope, pouts) if r["setting"] == setting]
        if not sel:
            continue
        tp = sum(t and p for t, p in sel)
        fp = sum(p and not t for t, p in sel)
        fn = sum(t and not p for t, p in sel)
        prec = tp / (tp + fp) if tp + fp else 0.0
        rec = tp / (tp + fn) if tp + fn else 0.0
        res["pope"][setting] = {
            "n": len(sel), "accuracy": round(100 * sum(t == p for t, p in sel) / len(sel), 1),
            "precision": round(100 * prec, 1), "recall": round(100 * rec, 1),
            "f1": round(100 * (2 * prec * rec / (prec + rec) if prec + rec else 0.0), 1),
            "yes_ratio": round(100 * sum(p for _, p in sel) / len(sel), 1)}
    res["pope_unparsed"] = sum(not normalize(o).startswith(("yes", "no")) for o in pouts)
    return res


def sft_rows(records, data_dir):
    from datasets import Dataset

    def gen():
        for r in records:
            prompt, images = split_prompt(r["messages"][:1], data_dir)
            answer = r["messages"][1]["content"]
            yield {"prompt": prompt, "completion": [{"role": "assistant", "content": [{"type": "text", "text": answer}]}],
                   "images": images}
    return Dataset.from_generator(gen)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ap.add_argument("--model", default=os.path.join(root, "embedded", "vlm", "model"))
    ap.add_argument("--data", default=os.path.join(root, "embedded", "vlm", "data"))
    ap.add_argument("--report", default=None, help="write the figures here (json)")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="a few steps, for a --quick build")
    args = ap.parse_args()
    if args.quick:
        args.steps, args.batch_size = 2, 2

    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor, set_seed

    torch.set_num_threads(args.threads)
    set_seed(args.seed)
    t0 = time.time()
    proc = AutoProcessor.from_pretrained(args.model)
    model = AutoModelForImageTextToText.from_pretrained(args.model, dtype=torch.float32).eval()
    vqa = load_jsonl(os.path.join(args.data, "test_vqa.jsonl"))
    pope = load_jsonl(os.path.join(args.data, "test_pope.jsonl"))
    timings = {}
    t = time.time()
    base = evaluate(model, proc, vqa, pope, args.data)
    timings["base_eval_s"] = round(time.time() - t, 1)
    print("base:", json.dumps({k: v for k, v in base.items() if k != "vqa_samples"}))

    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    t = time.time()
    train = sft_rows(load_jsonl(os.path.join(args.data, "sft_train.jsonl")), args.data)
    out_dir = os.path.join("/tmp", f"check_embedded_vlm_{os.getpid()}")
    cfg = SFTConfig(output_dir=out_dir, max_steps=args.steps, per_device_train_batch_size=args.batch_size,
                    learning_rate=args.lr, lr_scheduler_type="cosine", warmup_steps=max(1, args.steps // 20),
                    logging_steps=max(1, args.steps // 10), save_strategy="no", report_to=[], seed=args.seed,
                    max_length=None, use_cpu=True, dataloader_num_workers=0, bf16=False, fp16=False)
    lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules=LORA_TARGETS, task_type="CAUSAL_LM")
    model.train()
    trainer = SFTTrainer(model=model, args=cfg, train_dataset=train, processing_class=proc, peft_config=lora)
    n_trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    trainer.train()
    timings["sft_s"] = round(time.time() - t, 1)
    log = [{k: round(v, 4) if isinstance(v, float) else v for k, v in e.items()} for e in trainer.state.log_history]
    tuned_model = trainer.model.eval()
    t = time.time()
    tuned = evaluate(tuned_model, proc, vqa, pope, args.data)
    timings["tuned_eval_s"] = round(time.time() - t, 1)
    timings["total_s"] = round(time.time() - t0, 1)
    print("tuned:", json.dumps({k: v for k, v in tuned.items() if k != "vqa_samples"}))
    gain = round(tuned["vqa_accuracy"] - base["vqa_accuracy"], 1)
    print(f"VQA accuracy {base['vqa_accuracy']} -> {tuned['vqa_accuracy']} ({gain:+} points); {timings}")
    report = {"base": base, "tuned": tuned, "vqa_gain_points": gain, "timings_s": timings,
              "sft": {"steps": args.steps, "batch_size": args.batch_size, "lr": args.lr, "lora_r": 16, "lora_alpha": 32,
                      "targets": LORA_TARGETS, "trainable_parameters": n_trainable, "seed": args.seed, "log": log},
              "torch_threads": args.threads,
              "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}
    if args.report:
        with open(args.report, "w", encoding="utf-8") as f:
            json.dump(report, f, ensure_ascii=False, indent=1)


if __name__ == "__main__":
    main()
