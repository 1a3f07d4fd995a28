"""Overlap metrics for open generation against references: BLEU, chrF, ROUGE-1/2/L, METEOR.

Every number comes from a maintained library; this module only picks tokenizers and averages:

    bleu, chrf       sacrebleu corpus scores (0-100). BLEU uses sacrebleu's defaults (BLEU-4, 'exp'
                     smoothing, closest reference length) with tokenize="zh" for Chinese and "13a"
                     otherwise; chrF is sacrebleu's CHRF (character 6-grams, beta 2, no word n-grams).
    rouge1/2/L       rouge-score F1 (beta = 1: F = 2PR / (P + R)), mean over pairs, 0-1. ROUGE-L is
                     rouge-score's sentence-level LCS ("rougeL", not "rougeLsum"). No stemming.
    meteor           nltk's meteor_score (alpha 0.9, beta 3, gamma 0.5; exact, Porter-stem and WordNet
                     synonym matching), mean over pairs, 0-1. Without the WordNet data (nltk downloads it
                     from GitHub; offline machines do not have it) synonym matching is switched off by
                     handing nltk a WordNet with no synonyms, and `meteor_synonyms` says False: scores
                     are then exact + stem matching only, and lower than a WordNet-backed METEOR.

Tokens for ROUGE and METEOR (`tokenize`): lowercase; every Chinese/Japanese character (Han, kana) is a
token of its own, other text is split into runs of letters and digits (punctuation dropped). On ASCII
text this is exactly rouge-score's default tokenizer, so English scores equal rouge-score's own; on
Chinese it gives character-level ROUGE where rouge-score's default would drop every character.

    from pipeline.evaluation.scoring.textmetrics import score_generation
    score_generation(["the cat sat on the mat"], ["the cat is on the mat"])
    # {'bleu': ..., 'chrf': ..., 'rouge1': 0.833, ..., 'meteor': ..., 'n': 1, 'lang': 'en', ...}
"""
from __future__ import annotations

import re
from functools import lru_cache
from statistics import fmean
from typing import Any

# Han (CJK unified ideographs, extensions A-H, compatibility) and kana: scored one character at a time.
_CJK = ("\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
        "\U00020000-\U0002ebef\U00030000-\U0003134f")
_CJK_CHAR = re.compile(f"([{_CJK}])")
_WORD = re.compile(r"[^\W_]+")  # letters and digits, any script
_HAN = re.compile("[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002ebef\U00030000-\U0003134f]")

LANGS = ("auto", "zh", "en")
ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")


def tokenize(text: str) -> list[str]:
    """Lowercased tokens: each CJK character alone, otherwise runs of letters/digits."""
    return _WORD.findall(_CJK_CHAR.sub(r" \1 ", text.lower()))


class _ScriptAwareTokenizer:
    """rouge-score tokenizer interface (`tokenize(text) -> list[str]`) around `tokenize`."""

    def tokenize(self, text: str) -> list[str]:
        return tokenize(text)


def detect_lang(texts: list[str]) -> str:
    """'zh' when any text contains a Han character, else 'en' (sacrebleu's "zh" tokenizer splits Han
    characters and applies 13a to the rest, so it is also right for mixed Chinese/English corpora)."""
    return "zh" if any(_HAN.search(t) for t in texts) else "en"


def bleu_tokenizer(lang: str) -> str:
    """The sacrebleu tokenizer for a language: "zh" for Chinese, "13a" otherwise."""
    return "zh" if lang == "zh" else "13a"


def make_rouge_scorer():
    """rouge-score's RougeScorer for rouge1/2/L with the script-aware tokenizer (no stemming)."""
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(list(ROUGE_TYPES), tokenizer=_ScriptAwareTokenizer())


class _NoSynonyms:
    """Stands in for nltk's WordNet when its data is missing: every word has no synsets, so METEOR
    matches exact words and Porter stems only (reported as meteor_synonyms: False)."""

    def synsets(self, *_: Any, **__: Any) -> list:
        return []


@lru_cache(maxsize=1)
def _wordnet() -> tuple[Any, bool]:
    """(the WordNet to hand nltk's METEOR, whether it has synonyms). Never downloads anything."""
    from nltk.corpus import wordnet

    try:
        wordnet.ensure_loaded()
    except LookupError:  # nltk.download('wordnet') was never run (or could not reach GitHub)
        return _NoSynonyms(), False
    return wordnet, True


def meteor_synonyms() -> bool:
    """Whether METEOR here uses WordNet synonyms (the nltk 'wordnet' data is installed)."""
    return _wordnet()[1]


def _resolve_lang(lang: str, predictions: list[str], references: list[str]) -> str:
    if lang not in LANGS:
        raise ValueError(f"lang: unknown value {lang!r}; valid: {', '.join(LANGS)}")
    return detect_lang(references + predictions) if lang == "auto" else lang


def score_generation(predictions: list[str], references: list[str], lang: str = "auto") -> dict:
    """Corpus BLEU and chrF (sacrebleu, 0-100), mean ROUGE-1/2/L F1 (rouge-score, beta 1) and mean METEOR
    (nltk), 0-1, of predictions against one reference each. `lang` picks the BLEU tokenizer: "zh"
    (tokenize="zh"), "en" ("13a"), or "auto": "zh" when any text contains Chinese characters.
    Also returns n, lang (as resolved), bleu_tokenize and meteor_synonyms (False: exact + stem only)."""
    import sacrebleu
    from nltk.translate.meteor_score import meteor_score

    predictions, references = [str(p) for p in predictions], [str(r) for r in references]
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    if not predictions:
        raise ValueError("no predictions to score")
    lang = _resolve_lang(lang, predictions, references)
    tokenizer = bleu_tokenizer(lang)
    bleu = sacrebleu.BLEU(tokenize=tokenizer).corpus_score(predictions, [references])
    chrf = sacrebleu.CHRF().corpus_score(predictions, [references])

    scorer = make_rouge_scorer()
    rouge = [scorer.score(ref, pred) for pred, ref in zip(predictions, references)]
    wordnet, synonyms = _wordnet()
    meteor = [meteor_score([tokenize(ref)], tokenize(pred), wordnet=wordnet)
              for pred, ref in zip(predictions, references)]
    return {
        "bleu": bleu.score,
        "chrf": chrf.score,
        **{name: fmean(s[name].fmeasure for s in rouge) for name in ROUGE_TYPES},
        "meteor": fmean(meteor),
        "n": len(predictions),
        "lang": lang,
        "bleu_tokenize": tokenizer,
        "meteor_synonyms": synonyms,
    }
