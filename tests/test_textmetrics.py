"""Text metrics: the corrected golden values of the seed material (shared/seeds/NOTES.md), and agreement with
sacrebleu / rouge-score called directly (the wrapper must not drift from the libraries)."""

import pytest

pytest.importorskip("sacrebleu")
pytest.importorskip("rouge_score")
pytest.importorskip("nltk")

import sacrebleu  # noqa: E402
from rouge_score import rouge_scorer  # noqa: E402

from pipeline.evaluation.scoring.textmetrics import make_rouge_scorer, score_generation, tokenize  # noqa: E402

EN_PREDICTIONS = ["the cat the cat on the mat", "a cat sits on mat", "The quick brown fox jumps over the lazy dog.",
                  "It is raining, so we stay home today."]
EN_REFERENCES = ["the cat is on the mat", "the cat is sitting on the mat", "A quick brown fox jumped over a lazy dog.",
                 "It rains, so we are staying at home today."]
ZH_PREDICTIONS = ["鸭子每天在湖里游泳。", "小兰喜欢吃苹果和香蕉。"]
ZH_REFERENCES = ["鸭子每天在河里游泳。", "小兰喜欢吃苹果。"]


def test_bleu_identical_is_one_hundred():
    assert score_generation(["the quick brown fox jumps"], ["the quick brown fox jumps"])["bleu"] == pytest.approx(100.0)


def test_rouge_1_recall_and_lcs():
    scores = make_rouge_scorer().score("the cat is on the mat", "the cat sat on the mat")  # (target, prediction)
    assert scores["rouge1"].recall == pytest.approx(5 / 6)
    assert scores["rougeL"].recall * 6 == pytest.approx(5)  # LCS = 5 of the reference's 6 tokens
    result = score_generation(["the cat sat on the mat"], ["the cat is on the mat"])
    assert result["rouge1"] == pytest.approx(5 / 6) and result["rougeL"] == pytest.approx(5 / 6)  # F1, beta 1


def test_meteor_exact_matches_by_hand():
    # 5 of 6 tokens match in 2 chunks: Fmean = 5/6, penalty 0.5 * (2/5)^3; no synonym is involved
    result = score_generation(["the cat sat on the mat"], ["the cat is on the mat"])
    assert result["meteor"] == pytest.approx(5 / 6 * (1 - 0.5 * (2 / 5) ** 3))
    assert isinstance(result["meteor_synonyms"], bool)


def test_agrees_with_libraries_called_directly_english():
    result = score_generation(EN_PREDICTIONS, EN_REFERENCES)
    assert result["n"] == 4 and result["lang"] == "en" and result["bleu_tokenize"] == "13a"
    assert result["bleu"] == pytest.approx(sacrebleu.corpus_bleu(EN_PREDICTIONS, [EN_REFERENCES]).score)
    assert result["chrf"] == pytest.approx(sacrebleu.corpus_chrf(EN_PREDICTIONS, [EN_REFERENCES]).score)
    direct = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"])  # rouge-score's own tokenizer
    pairs = [direct.score(r, p) for p, r in zip(EN_PREDICTIONS, EN_REFERENCES)]
    for name in ("rouge1", "rouge2", "rougeL"):
        assert result[name] == pytest.approx(sum(s[name].fmeasure for s in pairs) / len(pairs))


def test_agrees_with_sacrebleu_chinese_tokenizer():
    result = score_generation(ZH_PREDICTIONS, ZH_REFERENCES)
    assert result["lang"] == "zh" and result["bleu_tokenize"] == "zh"
    assert result["bleu"] == pytest.approx(sacrebleu.corpus_bleu(ZH_PREDICTIONS, [ZH_REFERENCES], tokenize="zh").score)
    assert result["chrf"] == pytest.approx(sacrebleu.corpus_chrf(ZH_PREDICTIONS, [ZH_REFERENCES]).score)
    forced = score_generation(ZH_PREDICTIONS, ZH_REFERENCES, lang="en")
    assert forced["bleu"] == pytest.approx(sacrebleu.corpus_bleu(ZH_PREDICTIONS, [ZH_REFERENCES]).score)


def test_chinese_rouge_is_character_level():
    assert tokenize("鸭子每天在河里游泳。") == list("鸭子每天在河里游泳")
    assert tokenize("Hello, 世界! 5个") == ["hello", "世", "界", "5", "个"]
    # 9 characters each, one differs: 8/9 unigrams, 6/8 bigrams, LCS 8
    result = score_generation(["鸭子每天在湖里游泳。"], ["鸭子每天在河里游泳。"])
    assert result["rouge1"] == pytest.approx(8 / 9)
    assert result["rouge2"] == pytest.approx(6 / 8)
    assert result["rougeL"] == pytest.approx(8 / 9)
    # rouge-score's default tokenizer drops Chinese entirely: that is why the wrapper passes its own
    assert rouge_scorer.RougeScorer(["rouge1"]).score("鸭子每天在河里游泳。", "鸭子每天在湖里游泳。")["rouge1"].fmeasure == 0


def test_bad_inputs():
    with pytest.raises(ValueError, match="2 predictions but 1 references"):
        score_generation(["a", "b"], ["a"])
    with pytest.raises(ValueError, match="no predictions"):
        score_generation([], [])
    with pytest.raises(ValueError, match="valid: auto, zh, en"):
        score_generation(["a"], ["a"], lang="fr")
