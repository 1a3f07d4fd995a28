"""Negative log-likelihood with a sliding window and bounded memory: what a backend's `nll` computes
(the perplexity eval task's figure), and the output head and chunk size the distillation loss shares.

A text longer than the window is scored window by window: each window starts `stride` tokens after
the previous one and scores only the tokens the previous windows did not, with what comes before
them as context (the method of transformers' perplexity guide). Nothing is cut off, and every token
is scored once.

The memory of a naive pass is the logits: batch x length x vocabulary floats (32 x 1024 x 152k in
fp32 is ~20 GB), plus the copy cross-entropy makes. Here the model body runs on a few windows at a
time (a token budget), and the output head and log-softmax run on chunks of scored positions, so
at most `chunk x vocabulary` logits exist at once.
"""
from __future__ import annotations

from dataclasses import dataclass

TOKENS_PER_FORWARD = 4096          # window tokens per body forward (attention grows with window^2 per row)
LOGITS_BUDGET_BYTES = 256 * 2**20  # fp32 logits (and the softmax's copies) of one chunk of positions


@dataclass
class Window:
    ids: list[int]       # the window's tokens
    first_scored: int    # positions >= this are scored (each predicted from the ones before it)


def windows(ids: list[int], max_length: int, stride: int) -> list[Window]:
    """Windows of at most `max_length` tokens, `stride` apart, scoring each token once (the first
    token of a text has no context and is never scored)."""
    if len(ids) < 2:
        return []
    stride = max(1, min(stride, max_length - 1))  # a window's first token has no context in it: overlap by one
    found, scored_until = [], 1
    begin = 0
    while True:
        end = min(begin + max_length, len(ids))
        found.append(Window(ids[begin:end], max(scored_until - begin, 1)))
        scored_until = end
        if end == len(ids):
            return found
        begin += stride


def chunk_rows(vocab_size: int, budget_bytes: int = LOGITS_BUDGET_BYTES) -> int:
    """Scored positions per head/log-softmax chunk: fp32 logits, log-softmax and gather, ~3 copies."""
    return max(16, budget_bytes // (vocab_size * 4 * 3))


def output_head(model):
    """The output head, and the post-processing some architectures apply to its logits."""
    config = model.config
    cap = getattr(config, "final_logit_softcapping", None)
    scale = getattr(config, "logit_scale", None) or (1 / config.logits_scaling if getattr(config, "logits_scaling", None)
                                                     else None)

    def logits(hidden):
        out = model.get_output_embeddings()(hidden).float()
        if scale:
            out = out * scale
        if cap:
            out = cap * (out / cap).tanh()
        return out

    return logits


def hf_nll(model, tokenizer, texts: list[str], device: str, max_length: int, stride: int,
           progress=None) -> tuple[float, int]:
    """(total negative log-likelihood, scored tokens) of `texts` under a transformers causal LM."""
    import torch

    body = model.get_decoder()
    head = output_head(model)
    rows = chunk_rows(model.get_output_embeddings().weight.shape[0])
    all_windows = [w for text in texts for w in windows(tokenizer(text)["input_ids"], max_length, stride)]
    all_windows.sort(key=lambda w: len(w.ids))  # similar lengths batch with little padding
    per_forward = max(1, TOKENS_PER_FORWARD // max_length)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    total, count = 0.0, 0
    for start in range(0, len(all_windows), per_forward):
        batch = all_windows[start:start + per_forward]
        width = max(len(w.ids) for w in batch)
        ids = torch.tensor([w.ids + [pad] * (width - len(w.ids)) for w in batch], device=device)
        mask = torch.tensor([[1] * len(w.ids) + [0] * (width - len(w.ids)) for w in batch], device=device)
        with torch.inference_mode():
            hidden = body(input_ids=ids, attention_mask=mask).last_hidden_state
            # position p is predicted from the hidden state at p - 1
            picks = [(row, p) for row, w in enumerate(batch) for p in range(w.first_scored, len(w.ids))]
            for i in range(0, len(picks), rows):
                part = picks[i:i + rows]
                r = torch.tensor([row for row, _ in part], device=device)
                p = torch.tensor([pos for _, pos in part], device=device)
                logits = head(hidden[r, p - 1])
                total += float(torch.nn.functional.cross_entropy(logits, ids[r, p], reduction="sum"))
                count += len(part)
        if progress is not None:
            progress(len(batch))
    return total, count
