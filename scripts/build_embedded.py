"""Builds tunechain's embedded model and data from scratch, reproducibly (fixed seed).

Run as (from the repository root, ~20 minutes on 2 CPU cores):
    python scripts/build_embedded.py
which writes
    embedded/data/*.jsonl     synthetic bilingual chat data and held-out evaluation sets
    embedded/model/           HF Llama folder: config.json, model.safetensors (fp32),
                              generation_config.json, tokenizer.model/.json/_config.json,
                              build_metrics.json (loss curve, perplexity, timings)
Tiny smoke version for tests (seconds; writes nothing outside --out):
    python scripts/build_embedded.py --quick --out /tmp/embedded_quick

Steps: (1) generate the held-out sets, then the training sets and the pretraining corpus with
held-out items removed (scripts/embedded_data/), and check there is no overlap; (2) train the
SentencePiece tokenizer and write the HF tokenizer with the ChatML template, and verify it;
(3) pretrain a 4-layer Llama (hidden 256) on packed 128-token sequences of the plain-text corpus
(documents separated by </s>, no BOS, no chat format); (4) save it, reload it, and measure
held-out perplexity on test_text.jsonl. scripts/check_embedded.py then measures what SFT adds.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import embedded_data as ed  # noqa: E402
import embedded_pretrain as ep  # noqa: E402

# Defaults chosen after measuring (see embedded/README.md).
FULL = dict(corpus_chars=9_000_000, vocab_size=3072, seq_len=128, batch_size=16, steps=1600, lr=2e-3)
QUICK = dict(corpus_chars=150_000, vocab_size=1024, seq_len=64, batch_size=8, steps=20, lr=2e-3)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=None, help="model folder (default embedded/model; --quick: required)")
    ap.add_argument("--data-out", default=None, help="jsonl folder (default embedded/data; --quick: OUT/data)")
    ap.add_argument("--quick", action="store_true", help="tiny model, tiny corpus, a few steps (for tests)")
    ap.add_argument("--seed", type=int, default=ed.SEED)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--lr", type=float, default=None)
    ap.add_argument("--corpus-chars", type=int, default=None)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    t_start = time.time()
    hp = dict(QUICK if args.quick else FULL)
    for k in ("steps", "batch_size", "lr", "corpus_chars"):
        if getattr(args, k) is not None:
            hp[k] = getattr(args, k)
    if args.quick and not args.out:
        ap.error("--quick needs --out (a temporary folder)")
    root = os.path.dirname(HERE)
    out = args.out or os.path.join(root, "embedded", "model")
    data_out = args.data_out or (os.path.join(out, "data") if args.quick else os.path.join(root, "embedded", "data"))
    timings = {}
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)

    # (1) data ----------------------------------------------------------------------------------
    t = time.time()
    sizes = ed.Sizes() if not args.quick else ed.Sizes(test_math=20, test_text=10, test_instruct=8, test_tools=8,
                                                       preference_test=10, sft_math=60, sft_instruct=20,
                                                       sft_tool=20, preference_train=20, prompts_train=20,
                                                       prompts_tools=20)
    sets = ed.build_sets(args.seed, sizes)
    written = ed.write_sets(sets, data_out)
    item_keys: set[str] = set()
    docs = list(ed.pretrain_corpus(args.seed, hp["corpus_chars"], sets["held"], item_keys))
    joined = ed.normalize("\n".join(docs))
    overlap = ed.check_overlap(sets, item_keys, joined)
    assert overlap == 0, f"{overlap} held-out items found in training data"
    assert "####" not in joined and "<|im_start|>" not in joined and "<tool_call>" not in joined
    del joined
    for name, (n, size) in written.items():
        print(f"  {name}.jsonl: {n} records, {size / 1024:.0f} KiB")
    print(f"data: {len(docs)} pretraining documents, {sum(map(len, docs)) / 1e6:.1f}M chars; "
          f"held-out overlap 0 ({len(sets['held'])} held-out keys)")
    timings["data_s"] = round(time.time() - t, 1)

    # (2) tokenizer -----------------------------------------------------------------------------
    t = time.time()
    work = out + ".work"
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    lines = [ln for d in docs for ln in d.split("\n") if ln]
    for r in sets["sft_train"]:  # chat contents are in-domain text too (never the held-out sets)
        lines += [ln for m in r["messages"] for ln in m["content"].split("\n") if ln]
    random.Random(args.seed).shuffle(lines)
    spm_model = ep.train_tokenizer(lines, os.path.join(work, "sp"), hp["vocab_size"])
    tok = ep.save_hf_tokenizer(spm_model, out)
    check_texts = [r["text"] for r in sets["test_text"]] + [d[:1000] for d in docs[:200]] + \
        [json.dumps(r, ensure_ascii=False) for r in sets["sft_train"][:200]]
    tok_report = ep.verify_tokenizer(out, spm_model, check_texts)
    print(f"tokenizer: vocab {tok_report['vocab_size']}, special ids {tok_report['special_ids']}, "
          f"{tok_report['texts_checked']} texts verified")
    timings["tokenizer_s"] = round(time.time() - t, 1)

    # (3) pretraining ---------------------------------------------------------------------------
    import sentencepiece as spm

    t = time.time()
    sp = spm.SentencePieceProcessor(model_file=spm_model)  # same ids as the HF tokenizer (verified)
    data = ep.pack(sp.encode(docs), hp["seq_len"], sp.eos_id())
    n_tokens = data.numel()
    print(f"corpus: {n_tokens / 1e6:.2f}M tokens in {len(data)} rows of {hp['seq_len']}; "
          f"training {hp['steps']} steps x {hp['batch_size']} rows = "
          f"{hp['steps'] * hp['batch_size'] * hp['seq_len'] / 1e6:.2f}M tokens "
          f"({hp['steps'] * hp['batch_size'] / len(data):.2f} epochs)")
    torch.manual_seed(args.seed)
    from transformers import GenerationConfig, LlamaForCausalLM

    ids = tok_report["special_ids"]
    cfg = ep.make_config(len(tok), quick=args.quick, eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<pad>"],
                         bos_token_id=ids["<s>"])
    model = LlamaForCausalLM(cfg)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: Llama {cfg.num_hidden_layers} layers, hidden {cfg.hidden_size}, intermediate "
          f"{cfg.intermediate_size}, heads {cfg.num_attention_heads}/{cfg.num_key_value_heads}, "
          f"{n_params / 1e6:.2f}M parameters")
    train_report = ep.pretrain(model, data, hp["steps"], hp["batch_size"], hp["lr"], args.seed,
                               log_every=5 if args.quick else 50)
    timings["pretrain_s"] = round(time.time() - t, 1)

    # (4) save, reload, measure -----------------------------------------------------------------
    t = time.time()
    model.generation_config = GenerationConfig(bos_token_id=ids["<s>"], eos_token_id=[ids["<|im_end|>"], ids["</s>"]],
                                               pad_token_id=ids["<pad>"], do_sample=False)
    size_fp32 = n_params * 4
    model.save_pretrained(out, safe_serialization=True)
    if size_fp32 > 21e6:  # keep the committed weights small
        model.to(torch.bfloat16).save_pretrained(out, safe_serialization=True)
    shutil.rmtree(work)
    for name in os.listdir(out):  # safetensors writes 0600 files
        if os.path.isfile(os.path.join(out, name)):
            os.chmod(os.path.join(out, name), 0o644)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(out)
    reloaded = AutoModelForCausalLM.from_pretrained(out)
    reloaded.eval()
    x = torch.tensor([sp.encode(sets["test_text"][0]["text"])[:64]])
    with torch.no_grad():
        assert torch.allclose(model.float()(x).logits, reloaded(x).logits, atol=1e-4)
    ppl = ep.perplexity(reloaded, tok, [r["text"] for r in sets["test_text"]])
    print(f"held-out perplexity (test_text.jsonl, {len(sets['test_text'])} docs): {ppl:.3f}")
    # what the base model does (a plain-text prefix and a chat prompt)
    samples = []
    prompts = [sets["test_math"][0]["question"], sets["test_math"][-1]["question"]]
    for q in prompts:
        for text in (q, tok.apply_chat_template([{"role": "user", "content": q}], tokenize=False,
                                                add_generation_prompt=True)):
            enc = tok(text, return_tensors="pt")
            with torch.no_grad():
                g = reloaded.generate(**enc, max_new_tokens=48, do_sample=False)
            cont = tok.decode(g[0, enc["input_ids"].shape[1]:])
            samples.append({"prompt": text, "continuation": cont})
            print(f"--- base sample ---\n{text}[[{cont}]]")
    timings["save_eval_s"] = round(time.time() - t, 1)
    timings["total_s"] = round(time.time() - t_start, 1)
    weights = os.path.getsize(os.path.join(out, "model.safetensors"))
    metrics = {
        "seed": args.seed, "quick": args.quick, "hyperparameters": hp, "parameters": n_params,
        "weights_bytes": weights, "corpus_tokens": n_tokens, "corpus_documents": len(docs),
        "tokenizer": tok_report, "pretrain": train_report, "heldout_perplexity": round(ppl, 4),
        "timings_s": timings, "base_samples": samples, "torch_threads": args.threads,
        "data_files": {k: {"records": n, "bytes": b} for k, (n, b) in written.items()},
    }
    with open(os.path.join(out, "build_metrics.json"), "w", encoding="utf-8") as f:
        json.dump(metrics, f, ensure_ascii=False, indent=1)
    print(f"saved {out} (model.safetensors {weights / 1e6:.1f} MB); final pretraining loss "
          f"{train_report['final_loss_ema']:.4f} (ema), perplexity {ppl:.3f}")
    print(f"total time {timings['total_s'] / 60:.1f} min  {timings}")


if __name__ == "__main__":
    main()
