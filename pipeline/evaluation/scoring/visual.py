"""Scoring short answers about images: VQA exact match after normalisation, and POPE's yes/no figures
(Li et al. 2023, "Evaluating Object Hallucination in Large Vision-Language Models")."""
from __future__ import annotations

import re
import string
from collections import defaultdict

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_NUMBER_WORDS = {w: str(i) for i, w in enumerate(
    "zero one two three four five six seven eight nine ten".split())}


def normalize_answer(text: str) -> str:
    """Lowercase, no punctuation or articles, number words as digits, single spaces (the VQA convention)."""
    text = text.lower().strip()
    text = text.translate(str.maketrans("", "", string.punctuation))
    text = _ARTICLES.sub(" ", text)
    words = [_NUMBER_WORDS.get(w, w) for w in text.split()]
    return " ".join(words)


def yes_no(text: str) -> str | None:
    """POPE's reading of an answer: 'yes' or 'no' from its first word, else None (counted as not yes)."""
    words = normalize_answer(text).split()
    return words[0] if words and words[0] in ("yes", "no") else None


def vqa_scores(items: list[tuple[str, str, str]]) -> dict:
    """(question type, reference, answer) -> accuracy overall and per type (exact match, normalised)."""
    per_type: dict[str, list[bool]] = defaultdict(list)
    for kind, reference, answer in items:
        per_type[kind].append(normalize_answer(answer) == normalize_answer(reference))
    every = [ok for oks in per_type.values() for ok in oks]
    metrics = {"vqa_accuracy": round(sum(every) / len(every), 4), "vqa_n": len(every)}
    for kind, oks in sorted(per_type.items()):
        metrics[f"vqa_accuracy_{kind}"] = round(sum(oks) / len(oks), 4)
    return metrics


def pope_scores(items: list[tuple[str, str, str]]) -> dict:
    """(setting, reference yes/no, answer) -> accuracy, precision, recall, F1 and yes-ratio per setting and
    overall, with the hallucination rate: the share of questions about absent objects answered yes."""
    by_setting: dict[str, list[tuple[bool, bool]]] = defaultdict(list)
    for setting_name, reference, answer in items:
        by_setting[setting_name].append((reference == "yes", yes_no(answer) == "yes"))
    metrics: dict = {}
    everything = [pair for pairs in by_setting.values() for pair in pairs]
    for name, pairs in [("", everything), *sorted(by_setting.items())]:
        suffix = f"_{name}" if name else ""
        tp = sum(ref and said for ref, said in pairs)
        fp = sum(not ref and said for ref, said in pairs)
        tn = sum(not ref and not said for ref, said in pairs)
        fn = sum(ref and not said for ref, said in pairs)
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / (tp + fn) if tp + fn else 0.0
        metrics.update({
            f"pope_accuracy{suffix}": round((tp + tn) / len(pairs), 4),
            f"pope_precision{suffix}": round(precision, 4),
            f"pope_recall{suffix}": round(recall, 4),
            f"pope_f1{suffix}": round(2 * precision * recall / (precision + recall), 4) if precision + recall else 0.0,
            f"pope_yes_ratio{suffix}": round((tp + fp) / len(pairs), 4),
            f"hallucination_rate{suffix}": round(fp / (fp + tn), 4) if fp + tn else 0.0,
        })
    metrics["pope_n"] = len(everything)
    return metrics
