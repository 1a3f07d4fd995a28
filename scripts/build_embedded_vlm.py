"""Builds tunechain's embedded vision-language model and its data, reproducibly (fixed seed).

Run as (from the repository root, after scripts/build_embedded.py; ~12 minutes on 2 CPU cores):
    python scripts/build_embedded_vlm.py
which writes
    embedded/vlm/data/     synthetic 64x64 PNG pictures (images/) and the jsonl sets: sft_train, test_vqa,
                           test_pope, preference_train (image paths relative to the jsonl folder)
    embedded/vlm/model/    Idefics3 folder: config.json, model.safetensors (fp32), processor and tokenizer
                           files (tokenizer.model included), chat_template.jinja, generation_config.json,
                           build_metrics.json
Tiny smoke version for tests (seconds; writes nothing outside --out):
    python scripts/build_embedded_vlm.py --quick --out /tmp/embedded_vlm_quick

Steps: (1) draw the held-out pictures, then the training pictures (none equal to a held-out one, by
pixel hash), and write the sets; (2) wrap the embedded Llama (embedded/model) in an Idefics3 model with
a small SigLIP vision encoder (64x64 pictures cut into 2x2 tiles of 32 px plus an overview, the layout
llama.cpp uses; 8x8 patches, 4 image tokens per tile after pixel shuffle);
(3) alignment pretraining on captions of the training pictures (plain text after the image, never the
chat format), so the model sees but has not been taught to answer questions; (4) save, reload, check
the logits. scripts/check_embedded_vlm.py then measures what a LoRA SFT adds.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import embedded_vlm as ev  # noqa: E402

# Defaults chosen after measuring (see embedded/vlm/README.md).
FULL = dict(steps=1000, batch_size=32, lr=1e-3, lm_lr_scale=0.25)
QUICK = dict(steps=4, batch_size=4, lr=1e-3, lm_lr_scale=0.25)
QUICK_SIZES = dict(train_images=24, align_images=32, vqa_images=8, pope_images=4, preference=12)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=None, help="model folder (default embedded/vlm/model; --quick: required)")
    ap.add_argument("--data-out", default=None, help="data folder (default embedded/vlm/data; --quick: OUT/data)")
    ap.add_argument("--lm", default=None, help="text model folder (default embedded/model)")
    ap.add_argument("--quick", action="store_true", help="a few pictures and steps (for tests)")
    ap.add_argument("--seed", type=int, default=ev.SEED)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--lr", type=float, default=None)
    ap.add_argument("--lm-lr-scale", type=float, default=None)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    t_start = time.time()
    hp = dict(QUICK if args.quick else FULL)
    for k in hp:
        if getattr(args, k) is not None:
            hp[k] = getattr(args, k)
    if args.quick and not args.out:
        ap.error("--quick needs --out (a temporary folder)")
    root = os.path.dirname(HERE)
    lm_dir = args.lm or os.path.join(root, "embedded", "model")
    out = args.out or os.path.join(root, "embedded", "vlm", "model")
    data_out = args.data_out or (os.path.join(out, "data") if args.quick else os.path.join(root, "embedded", "vlm", "data"))
    timings = {}
    for d in (out, data_out):
        shutil.rmtree(d, ignore_errors=True)
    os.makedirs(out)

    # (1) data ----------------------------------------------------------------------------------
    t = time.time()
    sizes = ev.Sizes(**QUICK_SIZES) if args.quick else ev.Sizes()
    built = ev.build(args.seed, sizes)
    written = ev.write(built, data_out)
    for name, (n, size) in written.items():
        print(f"  {name}: {n} records, {size / 1024:.0f} KiB")
    print(f"data: {built.stats['train_images']} training pictures ({built.stats['align_images']} captioned), "
          f"{built.stats['vqa_images']} VQA + {built.stats['pope_images']} POPE held-out; overlap 0")
    timings["data_s"] = round(time.time() - t, 1)

    # (2) model ---------------------------------------------------------------------------------
    torch.manual_seed(args.seed)  # the new token embeddings and the vision tower are drawn here
    from embedded_vlm import align, model as vm

    model, proc = vm.make(lm_dir)
    probe = [im for im, _ in built.align[:4]]
    enc = proc(text=["<image>"] * len(probe), images=[[im] for im in probe], return_tensors="pt")
    assert torch.allclose(enc["pixel_values"], align.to_float(align.pixels(probe, proc.image_processor)),
                          atol=1e-6), "pixel path differs"
    n_params = sum(p.numel() for p in model.parameters())
    n_vision = sum(p.numel() for n, p in model.named_parameters() if "text_model" not in n)
    print(f"model: Idefics3, {n_params / 1e6:.2f}M parameters ({n_vision / 1e6:.2f}M vision + connector)")

    # (3) alignment pretraining -----------------------------------------------------------------
    t = time.time()
    report = align.train(model, proc, [im for im, _ in built.align], [c for _, c in built.align],
                         hp["steps"], hp["batch_size"], hp["lr"], hp["lm_lr_scale"], args.seed,
                         log_every=1 if args.quick else 50)
    timings["align_s"] = round(time.time() - t, 1)

    # (4) save, reload, check -------------------------------------------------------------------
    t = time.time()
    vm.save(model, proc, lm_dir, out)
    from transformers import AutoModelForImageTextToText, AutoProcessor

    proc2 = AutoProcessor.from_pretrained(out)
    reloaded = AutoModelForImageTextToText.from_pretrained(out).eval()
    samples = []
    texts = ["<image>", proc2.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What colour is the circle?"}]}],
        add_generation_prompt=True)]
    for i, (im, cap) in enumerate(built.align[:3]):
        for text in texts:
            enc = proc2(text=[text], images=[[im]], return_tensors="pt")
            with torch.no_grad():
                if i == 0 and text == texts[0]:
                    assert torch.allclose(model(**enc).logits, reloaded(**enc).logits, atol=1e-4), "reload differs"
                g = reloaded.generate(**enc, max_new_tokens=24, do_sample=False)
            cont = proc2.tokenizer.decode(g[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)
            samples.append({"prompt": text.replace("<image>", "<image>"), "caption": cap, "continuation": cont})
            print(f"--- base sample ({'caption' if text == texts[0] else 'chat'}) ---\n  truth: {cap}\n  model: {cont!r}")
    timings["save_check_s"] = round(time.time() - t, 1)
    timings["total_s"] = round(time.time() - t_start, 1)
    weights = os.path.getsize(os.path.join(out, "model.safetensors"))
    metrics = {
        "seed": args.seed, "quick": args.quick, "hyperparameters": hp, "parameters": n_params,
        "vision_parameters": n_vision, "weights_bytes": weights, "align": report, "timings_s": timings,
        "torch_threads": args.threads, "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "data": {**built.stats, "files": {k: {"records": n, "bytes": b} for k, (n, b) in written.items()}},
        "base_samples": samples,
    }
    with open(os.path.join(out, "build_metrics.json"), "w", encoding="utf-8") as f:
        json.dump(metrics, f, ensure_ascii=False, indent=1)
    print(f"saved {out} (model.safetensors {weights / 1e6:.1f} MB); final caption loss {report['final_loss_ema']:.4f} (ema)")
    print(f"total time {timings['total_s'] / 60:.1f} min  {timings}  peak RSS {metrics['peak_rss_mb']} MB")


if __name__ == "__main__":
    main()
