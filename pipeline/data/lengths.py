"""Token lengths of a stage's data, measured on a sample at plan time for the memory estimate.

Memory follows the padded length of the longest batch a stage meets, which for chat data is far
below max_length. The plan tokenizes the first SAMPLE records as the stage will (chat template
included) and takes the length that the longest of `draws` records would have: the quantile
1 - 1/(draws + 1) of the sample, capped at the stage's limit.
"""
from __future__ import annotations

from itertools import chain, islice

from pipeline.data import mixture
from pipeline.data.records import canonical
from pipeline.data.spec import as_spec

SAMPLE = 512
_CACHE: dict[tuple, list[int]] = {}  # (file, purpose, tokenizer) -> lengths: evals of one plan share their data


def _texts(record: dict, purpose: str, tokenizer) -> list[str]:
    render = tokenizer.apply_chat_template
    if purpose == "sft":
        return [render(record["messages"], tokenize=False)]
    if purpose in ("preference", "unpaired"):
        sides = ("completion",) if "completion" in record else ("chosen", "rejected")
        return [render(record["prompt"] + record[side], tokenize=False) for side in sides]
    if purpose == "prompt":
        return [render(record["prompt"], tokenize=False, add_generation_prompt=True)]
    if purpose in ("gsm8k", "instruct"):
        question = record["question"] if purpose == "gsm8k" else record["prompt"]
        return [render([{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True)]
    return [record["text"]]


def sample_lengths(spec, purpose: str, tokenizer, n: int = SAMPLE, image_tokens=None) -> list[int]:
    """Token counts of (up to) the first `n` records, rendered as the stage renders them. `image_tokens`:
    a vision-language model's (width, height) -> tokens per image (pipeline.models.vision), added for each
    image a record carries (its placeholder counts one token in the text)."""
    key = (repr(as_spec(spec)), purpose, getattr(tokenizer, "name_or_path", ""), str(tokenizer.chat_template), n,
           image_tokens is not None)
    if key in _CACHE:
        return _CACHE[key]
    lengths = []
    spec = as_spec(spec)
    parts = mixture.entries(spec) if spec.mixture else []  # a mixture: the first records of each entry
    sample = chain.from_iterable(islice(canonical(e.spec, purpose), max(1, n // len(parts))) for e in parts) \
        if parts else canonical(spec, purpose)
    for record in islice(sample, n):
        texts = _texts(record, purpose, tokenizer)
        length = max(len(ids) for ids in tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"])
        if image_tokens is not None:
            length += sum(image_tokens(*size) for size in _image_sizes(record))
        lengths.append(length)
    _CACHE[key] = lengths
    return lengths


UNKNOWN_IMAGE_SIZE = (1024, 1024)  # a remote image is not fetched at plan time: counted as a large one


def _image_sizes(record: dict) -> list[tuple[int, int]]:
    """(width, height) of each image part in a record's chats, read from the file headers."""
    from pipeline.data.images import image_size

    sizes = []
    for key in ("messages", "prompt"):
        for message in record.get(key) or []:
            content = message.get("content") if isinstance(message, dict) else None
            for part in content if isinstance(content, list) else []:
                if part.get("type") == "image":
                    sizes.append(image_size(part["image"]) or UNKNOWN_IMAGE_SIZE)
    return sizes


def longest_of(lengths: list[int], draws: int, cap: int | None = None) -> int | None:
    """The length the longest of `draws` records would have (an upper quantile of the sample)."""
    if not lengths:
        return None
    ordered = sorted(lengths)
    q = 1 - 1 / (max(draws, 1) + 1)
    value = ordered[min(len(ordered) - 1, int(q * len(ordered)))]
    return min(value, cap) if cap else value
