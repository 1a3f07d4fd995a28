"""Perplexity: sliding windows that score every token once, and logits in bounded chunks that give the
same sum as one full-vocabulary pass."""
import math

import pytest

from pipeline.backends import perplexity
from pipeline.backends.perplexity import hf_nll, windows


@pytest.mark.parametrize("n, length, stride", [(10, 4, 2), (10, 4, 4), (9, 16, 8), (1000, 256, 128), (2, 4, 2)])
def test_windows_score_every_token_but_the_first_once(n, length, stride):
    ids = list(range(n))
    found = windows(ids, length, stride)
    scored = [w.ids[p] for w in found for p in range(w.first_scored, len(w.ids))]
    assert scored == ids[1:]
    assert all(len(w.ids) <= length and w.first_scored >= 1 for w in found)


def test_windows_keep_context_before_the_scored_tokens():
    second = windows(list(range(10)), 4, 2)[1]
    assert second.ids == [2, 3, 4, 5] and second.first_scored == 2  # 2, 3 are context; 4, 5 are scored


def _naive(model, tokenizer, texts):
    """One forward per text with full logits: the reference the chunked pass must equal."""
    import torch

    total, count = 0.0, 0
    for text in texts:
        ids = torch.tensor([tokenizer(text)["input_ids"]])
        with torch.no_grad():
            logits = model(ids).logits[0, :-1].float()
        total += float(torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="sum"))
        count += ids.shape[1] - 1
    return total, count


def test_chunked_strided_nll_equals_the_full_pass(tiny_llama, monkeypatch):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_llama).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    texts = ["Tom has 3 apples and buys 4 more.", "A short one.", "The cat sat on the mat " * 6]
    want_total, want_count = _naive(model, tokenizer, texts)
    monkeypatch.setattr(perplexity, "LOGITS_BUDGET_BYTES", 1)  # the smallest chunk: 16 positions at a time
    total, count = hf_nll(model, tokenizer, texts, "cpu", max_length=512, stride=256)
    assert count == want_count and math.isclose(total, want_total, rel_tol=1e-5)
    # windows shorter than the longest text: every token still scored once, each with at least 8 tokens before it
    _, strided = hf_nll(model, tokenizer, texts, "cpu", max_length=16, stride=8)
    assert strided == want_count


def test_chunk_rows_bound_the_logits_of_a_large_vocabulary():
    rows = perplexity.chunk_rows(151_936)
    assert 16 <= rows and rows * 151_936 * 4 * 3 <= perplexity.LOGITS_BUDGET_BYTES
