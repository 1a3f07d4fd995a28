"""The image tasks' scoring (pipeline/evaluation/scoring/visual.py): VQA exact match after normalisation, and
POPE's figures, checked on a hand-worked example and against a second computation from the confusion counts."""
import random
from collections import Counter

import pytest

from pipeline.evaluation.scoring.visual import normalize_answer, pope_scores, vqa_scores, yes_no


@pytest.mark.parametrize("raw, normal", [("Red.", "red"), ("  The RED circle!", "red circle"), ("Two", "2"),
                                         ("a square", "square"), ("3", "3")])
def test_answers_are_normalised_as_vqa_does(raw, normal):
    assert normalize_answer(raw) == normal


def test_vqa_accuracy_overall_and_per_type():
    items = [("color", "red", "Red."), ("color", "blue", "green"), ("count", "2", "two"), ("count", "3", "3 shapes")]
    assert vqa_scores(items) == {"vqa_accuracy": 0.5, "vqa_n": 4, "vqa_accuracy_color": 0.5,
                                 "vqa_accuracy_count": 0.5}


def test_yes_no_reads_the_first_word_only():
    assert [yes_no(t) for t in ("Yes.", "no, there is not", "There is", "")] == ["yes", "no", None, None]


def test_pope_figures_on_a_hand_worked_example():
    # 4 present (answered yes, yes, no, "maybe"), 4 absent (answered yes, no, no, no): TP 2, FN 2, FP 1, TN 3
    items = [("random", "yes", a) for a in ("yes", "Yes", "no", "maybe")] + \
            [("random", "no", a) for a in ("yes", "no", "No.", "no")]
    got = pope_scores(items)
    assert got["pope_accuracy"] == 0.625 and got["pope_precision"] == round(2 / 3, 4) and got["pope_recall"] == 0.5
    assert got["pope_f1"] == round(2 * (2 / 3) * 0.5 / (2 / 3 + 0.5), 4)
    assert got["pope_yes_ratio"] == 0.375 and got["hallucination_rate"] == 0.25 and got["pope_n"] == 8
    assert got["pope_f1_random"] == got["pope_f1"]


def test_pope_figures_agree_with_a_second_computation():
    rng = random.Random(0)
    items = [(rng.choice(["random", "popular", "adversarial"]), rng.choice(["yes", "no"]),
              rng.choice(["yes", "no", "Yes, there is", "I see none"])) for _ in range(300)]
    got = pope_scores(items)
    for setting in ("random", "popular", "adversarial"):
        counts = Counter((ref, yes_no(answer) == "yes") for s, ref, answer in items if s == setting)
        tp, fp = counts[("yes", True)], counts[("no", True)]
        tn, fn = counts[("no", False)], counts[("yes", False)]
        precision, recall = tp / (tp + fp), tp / (tp + fn)
        assert got[f"pope_accuracy_{setting}"] == round((tp + tn) / sum(counts.values()), 4)
        assert got[f"pope_f1_{setting}"] == round(2 * precision * recall / (precision + recall), 4)
        assert got[f"hallucination_rate_{setting}"] == round(fp / (fp + tn), 4)
