"""Tokenizer and pretraining of tunechain's embedded model (a 4-layer Llama, hidden 256).

- train_tokenizer: a SentencePiece BPE model (byte fallback, digits split, no dummy prefix,
  identity normalisation, ChatML / tool / think symbols as user-defined pieces) that llama.cpp's
  converter accepts as a Llama SentencePiece tokenizer;
- save_hf_tokenizer: the HF folder files (tokenizer.model copied in, tokenizer.json,
  tokenizer_config.json with the ChatML chat template, no BOS, eos <|im_end|>, pad <pad>);
- verify_tokenizer: the checks the build asserts (template rendering, single-id markers, round trip,
  same ids as sentencepiece and after reload);
- pretrain: a plain PyTorch loop on packed sequences (AdamW, warmup + cosine, CPU).

Library module of scripts/build_embedded.py (run that). Alone, it retrains the tokenizer only:
    python scripts/embedded_pretrain.py --tokenizer-only --out /tmp/tok
"""
from __future__ import annotations

import json
import math
import os
import shutil
import time

import torch

SPECIAL_SYMBOLS = ["<|im_start|>", "<|im_end|>", "<tool_call>", "</tool_call>", "<think>", "</think>"]
# Only the ChatML markers are "special" for HF (skipped by decode(skip_special_tokens=True));
# tool and think tags stay visible in decoded text, as in Qwen's tokenizers.
HF_SPECIAL = ["<|im_start|>", "<|im_end|>"]

# ChatML. The assistant turn (content and its <|im_end|>) is inside {% generation %} so that
# trl's assistant_only_loss / return_assistant_tokens_mask see it. An assistant message's structured
# `tool_calls` are written as the data writes calls, <tool_call>{"name": ..., "arguments": ...}</tool_call>,
# so that trl's tool loop (GRPO with tools) can render the conversations it builds.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{% if message['role'] == 'assistant' %}"
    "{% generation %}{{ message['content'] or '' }}"
    "{% for call in message['tool_calls'] or [] %}{% set fn = call['function'] or call %}"
    "{{ '<tool_call>' + ({'name': fn['name'], 'arguments': fn['arguments']} | tojson) + '</tool_call>' }}"
    "{% endfor %}{{ '<|im_end|>' }}{% endgeneration %}{{ '\\n' }}"
    "{% else %}"
    "{{ message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def train_tokenizer(lines, prefix: str, vocab_size: int = 3072) -> str:
    """Trains the SentencePiece model on an iterable of text lines; returns the .model path."""
    import sentencepiece as spm

    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_prefix=prefix, model_type="bpe", vocab_size=vocab_size,
        character_coverage=1.0, byte_fallback=True, split_digits=True,
        unk_id=0, bos_id=1, eos_id=2, pad_id=3,
        unk_piece="<unk>", bos_piece="<s>", eos_piece="</s>", pad_piece="<pad>",
        user_defined_symbols=SPECIAL_SYMBOLS,
        # identity: no NFKC (it would turn full-width Chinese punctuation into ASCII);
        # no dummy prefix and no whitespace folding, so HF, spm and llama.cpp agree on spaces.
        normalization_rule_name="identity", remove_extra_whitespaces=False, add_dummy_prefix=False,
        max_sentence_length=8192, num_threads=2, minloglevel=2, input_sentence_size=0,
        shuffle_input_sentence=False,
    )
    return prefix + ".model"


def save_hf_tokenizer(spm_model: str, out_dir: str):
    """Writes tokenizer.model, tokenizer.json and tokenizer_config.json into out_dir."""
    from transformers import AutoTokenizer, LlamaTokenizer

    os.makedirs(out_dir, exist_ok=True)
    tmp = out_dir + ".tok_tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    shutil.copy(spm_model, os.path.join(tmp, "tokenizer.model"))
    tok = LlamaTokenizer.from_pretrained(tmp, add_prefix_space=False, legacy=False)
    shutil.rmtree(tmp)
    tok.save_pretrained(out_dir)
    shutil.copy(spm_model, os.path.join(out_dir, "tokenizer.model"))  # save_pretrained does not write it
    # tokenizer.json: tool/think tags are added tokens but not special
    tj_path = os.path.join(out_dir, "tokenizer.json")
    tj = json.load(open(tj_path, encoding="utf-8"))
    for t in tj["added_tokens"]:
        if t["content"] in SPECIAL_SYMBOLS:
            t["special"] = t["content"] in HF_SPECIAL
    json.dump(tj, open(tj_path, "w", encoding="utf-8"), ensure_ascii=False, indent=2)
    cfg_path = os.path.join(out_dir, "tokenizer_config.json")
    cfg = json.load(open(cfg_path, encoding="utf-8"))
    cfg.update({
        "add_bos_token": False, "add_eos_token": False, "add_prefix_space": False, "legacy": False,
        "bos_token": "<s>", "eos_token": "<|im_end|>", "pad_token": "<pad>", "unk_token": "<unk>",
        "extra_special_tokens": list(HF_SPECIAL), "chat_template": CHAT_TEMPLATE,
        # llama.cpp's converter takes token types from here (special -> CONTROL, else USER_DEFINED);
        # without it the ChatML markers become NORMAL tokens that llama.cpp does not match as one piece.
        "added_tokens_decoder": {
            str(tok.convert_tokens_to_ids(c)): {"content": c, "lstrip": False, "normalized": False, "rstrip": False,
                                                "single_word": False, "special": c in HF_SPECIAL}
            for c in SPECIAL_SYMBOLS},
        "model_max_length": 512, "padding_side": "left", "clean_up_tokenization_spaces": False,
    })
    cfg.pop("is_local", None)
    cfg.pop("local_files_only", None)
    json.dump(cfg, open(cfg_path, "w", encoding="utf-8"), ensure_ascii=False, indent=2)
    return AutoTokenizer.from_pretrained(out_dir)


def special_ids(tok) -> dict:
    names = ["<unk>", "<s>", "</s>", "<pad>"] + SPECIAL_SYMBOLS
    return {n: tok.convert_tokens_to_ids(n) for n in names}


def verify_tokenizer(folder: str, spm_model: str, texts: list[str]) -> dict:
    """Asserts the tokenizer contract; returns a small report."""
    import sentencepiece as spm
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    sp = spm.SentencePieceProcessor(model_file=spm_model)
    ids = special_ids(tok)
    assert ids["<unk>"] == 0 and ids["<s>"] == 1 and ids["</s>"] == 2 and ids["<pad>"] == 3, ids
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<pad>", (tok.eos_token, tok.pad_token)
    msgs = [{"role": "user", "content": "小明有3个苹果，又买了5个。现在他有多少个苹果？"},
            {"role": "assistant", "content": "3 + 5 = 8\n#### 8"}]
    rendered = tok.apply_chat_template(msgs, tokenize=False)
    expect = ("<|im_start|>user\n小明有3个苹果，又买了5个。现在他有多少个苹果？<|im_end|>\n"
              "<|im_start|>assistant\n3 + 5 = 8\n#### 8<|im_end|>\n")
    assert rendered == expect, repr(rendered)
    gen = tok.apply_chat_template(msgs[:1], tokenize=False, add_generation_prompt=True)
    assert gen == expect.split("<|im_start|>assistant")[0] + "<|im_start|>assistant\n", repr(gen)
    enc = tok(rendered, add_special_tokens=False)["input_ids"]
    assert enc[0] == ids["<|im_start|>"] and enc.count(ids["<|im_end|>"]) == 2, enc
    assert ids["<s>"] not in tok(rendered)["input_ids"], "BOS added"
    out = tok.apply_chat_template(msgs, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    masked = [i for i, m in zip(out["input_ids"], out["assistant_masks"]) if m]
    assert tok.decode(masked) == "3 + 5 = 8\n#### 8<|im_end|>", tok.decode(masked)
    tc = '<tool_call>{"name": "calculator", "arguments": {"expression": "23 * 4"}}</tool_call>'
    e = tok(tc, add_special_tokens=False)["input_ids"]
    assert e[0] == ids["<tool_call>"] and e[-1] == ids["</tool_call>"]
    assert tok.decode(e, skip_special_tokens=True) == tc  # tool tags survive skip_special_tokens
    n_spm_diff = 0
    for t in texts + [rendered, tc]:
        e = tok(t, add_special_tokens=False)["input_ids"]
        assert tok.decode(e) == t, (t, tok.decode(e))
        n_spm_diff += e != sp.encode(t)
    assert n_spm_diff == 0, f"{n_spm_diff} texts tokenized differently by HF and sentencepiece"
    tok2 = AutoTokenizer.from_pretrained(folder)
    assert all(tok2(t)["input_ids"] == tok(t)["input_ids"] for t in texts)
    return {"vocab_size": len(tok), "special_ids": ids, "texts_checked": len(texts) + 2}


# ----------------------------------------------------------------------------------------------
# Model and training
# ----------------------------------------------------------------------------------------------
def make_config(vocab_size: int, quick: bool = False, **over):
    from transformers import LlamaConfig

    kw = dict(vocab_size=vocab_size, hidden_size=256, intermediate_size=768, num_hidden_layers=4,
              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
              tie_word_embeddings=True, rope_theta=10000.0, rms_norm_eps=1e-5, initializer_range=0.02,
              bos_token_id=1, eos_token_id=2, pad_token_id=3, hidden_act="silu", attention_bias=False,
              mlp_bias=False)
    if quick:
        kw.update(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                  num_key_value_heads=1)
    kw.update(over)
    return LlamaConfig(**kw)


def pack(token_docs, seq_len: int, eos_id: int) -> torch.Tensor:
    """Concatenates documents, each followed by </s>, and cuts [n, seq_len] rows (tail dropped)."""
    flat = []
    for d in token_docs:
        flat.extend(d)
        flat.append(eos_id)
    n = len(flat) // seq_len
    return torch.tensor(flat[: n * seq_len], dtype=torch.long).view(n, seq_len)


def lr_at(step, total, peak, warmup, floor=0.1):
    if step < warmup:
        return peak * (step + 1) / warmup
    p = (step - warmup) / max(1, total - warmup)
    return peak * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * p)))


def pretrain(model, data: torch.Tensor, steps: int, batch_size: int, lr: float, seed: int,
             warmup: int | None = None, weight_decay: float = 0.1, log_every: int = 25, log=print) -> dict:
    """Trains on random batches of packed rows (one pass = epoch over a fixed permutation)."""
    g = torch.Generator().manual_seed(seed)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=lr, betas=(0.9, 0.95), eps=1e-8)
    warmup = warmup if warmup is not None else max(1, steps // 20)
    model.train()
    order = torch.randperm(len(data), generator=g)
    pos, t0, t_log, tokens, hist = 0, time.time(), time.time(), 0, []
    ema = None
    for step in range(steps):
        if pos + batch_size > len(order):
            order, pos = torch.randperm(len(data), generator=g), 0
        batch = data[order[pos: pos + batch_size]]
        pos += batch_size
        for group in opt.param_groups:
            group["lr"] = lr_at(step, steps, lr, warmup)
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        gn = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        tokens += batch.numel()
        li = loss.item()
        ema = li if ema is None else 0.95 * ema + 0.05 * li
        if (step + 1) % log_every == 0 or step == 0 or step + 1 == steps:
            now = time.time()
            tps = tokens / (now - t0)
            log(f"step {step + 1:5d}/{steps}  loss {li:.4f}  (ema {ema:.4f})  lr {opt.param_groups[0]['lr']:.2e}  "
                f"grad_norm {gn:.2f}  {tps:,.0f} tok/s  {now - t0:6.0f}s")
            hist.append({"step": step + 1, "loss": round(li, 4), "ema": round(ema, 4)})
    model.eval()
    return {"steps": steps, "tokens": tokens, "seconds": round(time.time() - t0, 1), "final_loss_ema": round(ema, 4),
            "final_loss": round(li, 4), "tokens_per_s": round(tokens / (time.time() - t0)), "history": hist}


@torch.no_grad()
def perplexity(model, tok, texts: list[str], seq_len: int = 512) -> float:
    """Token-level perplexity over documents (each scored alone, </s> appended as in pretraining)."""
    model.eval()
    nll, n = 0.0, 0
    for t in texts:
        ids = tok(t, add_special_tokens=False)["input_ids"][: seq_len - 1] + [tok.convert_tokens_to_ids("</s>")]
        x = torch.tensor([ids])
        out = model(input_ids=x, labels=x)
        k = len(ids) - 1
        nll += out.loss.item() * k
        n += k
    return math.exp(nll / n)


def main():
    import argparse
    import sys

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import embedded_data as ed

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokenizer-only", action="store_true", required=True)
    ap.add_argument("--out", default="/tmp/embedded_tok")
    args = ap.parse_args()
    sets = ed.build_sets()
    docs = list(ed.pretrain_corpus(ed.SEED, 2_000_000, sets["held"]))
    os.makedirs(args.out, exist_ok=True)
    model_path = train_tokenizer((l for d in docs for l in d.split("\n") if l), os.path.join(args.out, "sp"))
    save_hf_tokenizer(model_path, args.out)
    print(json.dumps(verify_tokenizer(args.out, model_path, [r["text"] for r in sets["test_text"]]), indent=1))


if __name__ == "__main__":
    main()
