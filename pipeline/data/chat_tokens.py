"""Chats to token ids with a loss mask on the assistant turns, for any chat template.

trl's own `assistant_only_loss` needs `{% generation %}` markers, which real templates (SmolLM2,
Qwen3, Llama 3) do not have, and its prompt/completion form trains only the last turn. Here the
template renders the whole chat once; each assistant turn's text span is found by rendering the
chat up to that turn with and without it (exact wherever the template renders earlier turns the
same way later), or, where a template rewrites history (Qwen3 drops earlier think blocks), by
finding the turn's content in the full text, end-of-turn token included. Tokens that start inside a
span are trained. `assistant_turns: last` trains the final reply only (LLaMA-Factory's mask_history).
"""
from __future__ import annotations

from typing import Iterable

ALL, LAST = "all", "last"


def _render(tokenizer, messages: list[dict], generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)


def assistant_spans(tokenizer, messages: list[dict], turns: str = ALL) -> tuple[str, list[tuple[int, int]]]:
    """(the rendered chat, the character spans to train: each assistant reply and its end-of-turn token)."""
    full = _render(tokenizer, messages, False)
    replies = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    if turns == LAST:
        replies = replies[-1:]
    spans, cursor = [], 0
    end_of_turn = tokenizer.eos_token or ""
    for i in replies:
        before = _render(tokenizer, messages[:i], True)
        through = _render(tokenizer, messages[:i + 1], False) if i + 1 < len(messages) else full
        if full.startswith(through) and through.startswith(before) and len(before) >= cursor:
            spans.append((len(before), len(through)))
            cursor = len(through)
            continue
        content = messages[i].get("content") or ""
        at = full.find(content, cursor) if content else -1
        if at < 0:  # e.g. a tool-call turn with no text that the template renders as JSON: not trained
            continue
        end = at + len(content)
        if end_of_turn and full.startswith(end_of_turn, end):
            end += len(end_of_turn)
        spans.append((at, end))
        cursor = end
    return full, spans


def tokenize_chat(tokenizer, messages: list[dict], turns: str = ALL) -> dict:
    """{"input_ids", "assistant_masks"}: trl's SFTTrainer takes these as a processed dataset and builds
    labels from the mask (-100 elsewhere), truncating to max_length."""
    text, spans = assistant_spans(tokenizer, messages, turns)
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    mask = [int(any(start <= begin < end for start, end in spans)) for begin, _ in encoded["offset_mapping"]]
    return {"input_ids": encoded["input_ids"], "assistant_masks": mask}


def tokenize_chats(tokenizer, records: Iterable[dict], turns: str = ALL) -> list[dict]:
    return [tokenize_chat(tokenizer, r["messages"], turns) for r in records]


def tokenize_record(record: dict, tokenizer, turns: str = ALL, max_length: int | None = None) -> dict:
    """tokenize_chat for one canonical sft record, cut at max_length: the transform of
    pipeline.data.datasets.prepared."""
    return truncated(tokenize_chat(tokenizer, record["messages"], turns), max_length)


def truncated(row: dict, max_length: int | None) -> dict:
    """Every column of a tokenized row cut at max_length (trl's truncation, done once when tokenizing)."""
    return {key: value[:max_length] for key, value in row.items()} if max_length else row
