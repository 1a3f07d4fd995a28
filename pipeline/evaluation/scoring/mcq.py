"""Multiple choice by log-likelihood (MMLU / C-Eval style), no generation.

Files are .jsonl or .csv (with a header) whose records have `question`, one column per option
letter (A, B, C, D, and optionally E, F, ...), `answer` (a letter) and an optional `subject`:

    {"question": "2 + 2 = ?", "A": "3", "B": "4", "C": "5", "D": "22", "answer": "B", "subject": "math"}

`load_mcq` checks every record first and raises DataError with one `path:line: reason` per bad
record. `score_mcq` scores, for each question, the log-likelihood the model gives each option's
continuation after the prompt, and predicts the most likely option:

    letter  the prompt lists the options and ends with "Answer:"; continuations " A", " B", ...
    text    the prompt is "Question: ...\\nAnswer:"; continuations are " <option text>", scored
            per token (sum of log-probabilities / number of tokens) so long options aren't penalised

Context and continuation are split the way lm-evaluation-harness does: the continuation's tokens
are those of tokenize(prompt + continuation) after its common prefix with tokenize(prompt).
"""
from __future__ import annotations

import string
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterator

from pipeline.data.problems import DataError, Invalid, collect
from pipeline.data.readers import display, existing_file, read_csv, read_jsonl

PROMPT_STYLES = ("letter", "text")
LETTERS = string.ascii_uppercase
_SCALARS = (str, int, float)


# ---------------------------------------------------------------------------------------------
# Loading

def load_mcq(path: str | Path) -> list[dict]:
    """Every record of an MCQ file as {question, options: {letter: text}, answer, subject, ...extra keys}.

    Raises DataError naming `path:line: reason` for each bad record (the first few of them)."""
    resolved = existing_file(str(path))  # relative paths: from the project root, as in pipeline.data.datasets
    where = display(resolved)
    suffix = resolved.suffix.lower()
    if suffix == ".jsonl":
        entries: Iterator[tuple[str, Any]] = read_jsonl(resolved, where)
    elif suffix == ".csv":
        _check_csv_header(resolved, where)
        entries = read_csv(resolved, where)
    else:
        raise DataError(f"{where}: unknown extension '{resolved.suffix}' for multiple-choice data (valid: .jsonl, .csv)")
    return collect(entries, lambda _, item: _mcq_record(item), where)


def _check_csv_header(path: Path, where: str) -> None:
    import csv

    with path.open(encoding="utf-8-sig", newline="") as handle:
        header = next(csv.reader(handle), None)
    if header is None:
        return  # empty: reported as such after reading
    missing = [name for name in ("question", "A", "B", "answer") if name not in header]
    if missing:
        raise DataError(f"{where}:1: the header must name question, A, B, ... and answer; missing "
                        f"{', '.join(missing)} (found: {', '.join(header)}). MMLU's raw CSVs have no header: "
                        "add the line question,A,B,C,D,answer")


def kind_name(value: Any) -> str:
    return {str: "string", int: "number", float: "number", bool: "boolean", list: "list",
            dict: "object"}.get(type(value), "null" if value is None else type(value).__name__)


def _text(value: Any, name: str) -> str:
    if value is None or (isinstance(value, str) and not value.strip()):
        raise Invalid(f"missing {name}")
    if isinstance(value, bool) or not isinstance(value, _SCALARS):
        raise Invalid(f"{name} must be a string, got {kind_name(value)}")
    return str(value)


def _mcq_record(item: Any) -> dict:
    if not isinstance(item, dict):
        raise Invalid(f"expected a JSON object, got {kind_name(item)}")
    question = _text(item.get("question"), "'question'")
    present = [key for key in item if len(key) == 1 and key in LETTERS and item[key] is not None]
    if not present:
        raise Invalid("no options: expected columns A, B, C, D (one per option letter)")
    letters = LETTERS[:LETTERS.index(max(present)) + 1]
    if len(letters) < 2:
        raise Invalid("missing option 'B' (a question needs at least options A and B)")
    options = {letter: _text(item.get(letter), f"option '{letter}'") for letter in letters}
    raw_answer = item.get("answer")
    if raw_answer is None or (isinstance(raw_answer, str) and not raw_answer.strip()):
        raise Invalid("missing answer")
    answer = str(raw_answer).strip().upper() if isinstance(raw_answer, str) else None
    if answer is None or len(answer) != 1 or answer not in LETTERS:
        raise Invalid(f"answer must be an option letter, got {raw_answer!r}")
    if answer not in options:
        raise Invalid(f"answer '{answer}' is not among the options {', '.join(letters)}")
    subject = item.get("subject")
    if subject is not None and not isinstance(subject, str):
        raise Invalid(f"'subject' must be a string, got {kind_name(subject)}")
    extra = {k: v for k, v in item.items()
             if k not in ("question", "answer", "subject") and not (len(k) == 1 and k in LETTERS)}
    return {**extra, "question": question, "options": options, "answer": answer,
            "subject": subject.strip() if subject and subject.strip() else None}


# ---------------------------------------------------------------------------------------------
# Prompts

def mcq_prompt(record: dict, prompt_style: str = "letter") -> str:
    """The context every option's continuation is scored after."""
    if prompt_style == "text":
        return f"Question: {record['question'].strip()}\nAnswer:"
    header = ""
    if record.get("subject"):
        header = f"The following is a multiple choice question about {record['subject'].replace('_', ' ')}.\n\n"
    options = "".join(f"\n{letter}. {text.strip()}" for letter, text in record["options"].items())
    return f"{header}{record['question'].strip()}{options}\nAnswer:"


def mcq_continuations(record: dict, prompt_style: str = "letter") -> dict[str, str]:
    if prompt_style == "text":
        return {letter: " " + text.strip() for letter, text in record["options"].items()}
    return {letter: f" {letter}" for letter in record["options"]}


def split_ids(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """(context ids, continuation ids) with context + continuation == tokenize(context + continuation)."""
    context_ids = tokenizer(context)["input_ids"]
    whole = tokenizer(context + continuation)["input_ids"]
    n = 0
    while n < min(len(context_ids), len(whole)) and context_ids[n] == whole[n]:
        n += 1
    if n == len(whole):
        raise ValueError(f"continuation {continuation!r} adds no tokens after {context[-40:]!r}")
    if n == 0:  # nothing to condition the first token on: start from BOS (or EOS)
        start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        return [start], whole
    return whole[:n], whole[n:]


# ---------------------------------------------------------------------------------------------
# Scoring

def loglikelihoods(model, requests: list[tuple[list[int], list[int]]], device: str, batch_size: int = 8,
                   pad_id: int = 0) -> list[float]:
    """Sum of log p(continuation | context) for each (context ids, continuation ids).

    Requests whose forward rows are identical (e.g. one-token continuations after the same prompt)
    share one row; rows run longest first in right-padded batches."""
    import torch

    rows: dict[tuple[int, ...], int] = {}
    needs = []  # per request: (row, first target position in the row, continuation ids)
    for context, continuation in requests:
        row = tuple(context + continuation[:-1])
        needs.append((rows.setdefault(row, len(rows)), len(context) - 1, continuation))
    unique = list(rows)
    order = sorted(range(len(unique)), key=lambda i: -len(unique[i]))
    by_row: dict[int, list[int]] = defaultdict(list)
    for index, (row, _, _) in enumerate(needs):
        by_row[row].append(index)
    results = [0.0] * len(requests)
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        width = len(unique[chunk[0]])
        ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for b, row in enumerate(chunk):
            ids[b, :len(unique[row])] = torch.tensor(unique[row])
            mask[b, :len(unique[row])] = 1
        with torch.inference_mode():
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
        for b, row in enumerate(chunk):
            for index in by_row[row]:
                _, first, continuation = needs[index]
                picked = logits[b, first:first + len(continuation)].float().log_softmax(-1)
                targets = torch.tensor(continuation, device=picked.device)
                results[index] = float(picked.gather(1, targets[:, None]).sum())
    return results


def score_mcq(model, tokenizer, records: list[dict], device: str, batch_size: int = 8,
              prompt_style: str = "letter") -> dict:
    """Accuracy of picking the most likely option (records as load_mcq returns them).

    Returns mcq_accuracy, mcq_n, mcq_macro_accuracy (mean over subjects), mcq_subject_accuracy
    {subject: accuracy} ("default" for records without one), mcq_prompt_style and predictions:
    per record {index, subject, answer, predicted, correct, loglikelihood {letter: sum},
    tokens {letter: n}, scores {letter: what was compared}}."""
    if prompt_style not in PROMPT_STYLES:
        raise ValueError(f"unknown prompt_style '{prompt_style}' (known: {', '.join(PROMPT_STYLES)})")
    if not records:
        raise ValueError("score_mcq needs at least one record")
    requests, owners = [], []
    for index, record in enumerate(records):
        prompt = mcq_prompt(record, prompt_style)
        for letter, continuation in mcq_continuations(record, prompt_style).items():
            requests.append(split_ids(tokenizer, prompt, continuation))
            owners.append((index, letter))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    was_training = getattr(model, "training", False)
    if was_training:
        model.eval()
    try:
        values = loglikelihoods(model, requests, device, batch_size, pad_id)
    finally:
        if was_training:
            model.train()
    predictions = [{"index": i, "question": r["question"], "subject": r.get("subject"), "answer": r["answer"],
                    "loglikelihood": {},
                    "tokens": {}, "scores": {}} for i, r in enumerate(records)]
    for (index, letter), (_, continuation), value in zip(owners, requests, values):
        entry = predictions[index]
        entry["loglikelihood"][letter] = value
        entry["tokens"][letter] = len(continuation)
        entry["scores"][letter] = value / len(continuation) if prompt_style == "text" else value
    per_subject: dict[str, list[bool]] = defaultdict(list)
    for entry in predictions:
        entry["predicted"] = max(entry["scores"], key=entry["scores"].get)
        entry["correct"] = entry["predicted"] == entry["answer"]
        per_subject[entry["subject"] or "default"].append(entry["correct"])
    subject_accuracy = {s: sum(hits) / len(hits) for s, hits in sorted(per_subject.items())}
    return {
        "mcq_accuracy": sum(e["correct"] for e in predictions) / len(predictions),
        "mcq_n": len(predictions),
        "mcq_macro_accuracy": sum(subject_accuracy.values()) / len(subject_accuracy),
        "mcq_subject_accuracy": subject_accuracy,
        "mcq_prompt_style": prompt_style,
        "predictions": predictions,
    }
