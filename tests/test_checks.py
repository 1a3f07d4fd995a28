"""Instruction-following checks: every shipped instruct record's reference passes its own check and a
clearly wrong answer fails it; hand-written cases for the forms the data does not cover."""
import json
from pathlib import Path

import pytest

from pipeline.data.check_specs import CHECK_TYPES
from pipeline.evaluation.scoring.instruction_checks import (
    CHECKS,
    count_chars,
    count_list_items,
    count_words,
    passes,
    validate_spec,
)

DATA = Path(__file__).resolve().parent.parent / "embedded" / "data" / "test_instruct.jsonl"
RECORDS = [json.loads(line) for line in DATA.read_text(encoding="utf-8").splitlines() if line.strip()]


def _wrong(record: dict) -> list[str]:
    """Clearly wrong answers for a record, derived from its reference."""
    spec, reference = record["check"], record["reference"]
    kind = spec["type"]
    if kind == "json_keys":
        value = json.loads(reference)
        return [json.dumps({k: v for k, v in list(value.items())[1:]}, ensure_ascii=False),   # a key missing
                json.dumps({**value, "extra": 1}), reference.rstrip("}"), json.dumps(list(value))]
    if kind == "word_count":
        return [reference + (" 再" if spec.get("unit") == "char" else " again"),
                "一二" if spec.get("unit") == "char" else "Hi."]
    if kind == "list_items":
        return [reference + f"\n{spec['n'] + 1}. extra", reference.split("\n", 1)[0], reference.replace("\n", ", ")]
    if kind == "question":
        return [reference[:-1] + ("。" if record["lang"] == "zh" else "."), "Why?", reference + "\n" + reference]
    raise AssertionError(f"no wrong answers for {kind}")


def test_data_uses_only_known_check_types():
    assert {r["check"]["type"] for r in RECORDS} <= set(CHECKS)


def test_every_check_type_a_spec_accepts_has_a_check():
    assert CHECK_TYPES == tuple(CHECKS)


@pytest.mark.parametrize("record", RECORDS, ids=[f"{i}-{r['check']['type']}-{r['lang']}" for i, r in enumerate(RECORDS)])
def test_reference_passes_and_wrong_answer_fails(record):
    assert validate_spec(record["check"]) is None
    assert passes(record["reference"], record["check"]), record["reference"]
    for wrong in _wrong(record):
        assert not passes(wrong, record["check"]), wrong


def test_json_checks():
    assert passes('```json\n{"a": 1, "b": [2]}\n```', {"type": "json_keys", "keys": ["b", "a"]})
    assert passes('{"a": 1}', {"type": "json_valid"}) and passes("[1, 2]", {"type": "json_valid"})
    assert not passes("Here it is: {\"a\": 1}", {"type": "json_valid"})
    assert not passes('"just a string"', {"type": "json_valid"})
    assert passes('{"a": 1, "b": 2, "c": 3}', {"type": "json_keys", "keys": ["a", "b"], "exact": False})
    assert not passes('{"a": 1, "b": 2, "c": 3}', {"type": "json_keys", "keys": ["a", "b"]})


def test_counting_words_and_characters():
    assert count_words("Don't use well-known tools: 3.5 kg, ok?") == 7
    assert count_words("数据、模型、预测") == 3  # CJK runs between punctuation
    assert count_chars("鸭子每天在河里游泳。") == 9  # punctuation does not count
    assert count_chars("AI 很好!") == 4
    spec = {"type": "word_count", "n": 50, "unit": "char", "relation": "at_most"}  # 不超过50字
    assert passes("一款智能手表，续航七天。", spec) and not passes("表" * 51, spec)
    assert passes("one two three", {"type": "word_count", "n": 2, "relation": "at_least"})


def test_list_items_forms():
    assert count_list_items("Here are two:\n- bird\n- dog\n") == 2
    assert count_list_items("1、印度\n2、巴西\n（3）埃及\n四、中国") == 4
    assert count_list_items("1. fruit\n   - apple\n   - pear\n2. nuts") == 2  # nested items do not count
    assert count_list_items("**bold** text\n1.5 kg of flour") == 0


def test_question_forms():
    spec = {"type": "question", "expected": "Is the tiger at home?"}
    assert passes('"is the tiger at home ?"', spec)
    assert not passes("Is the tiger home?", spec)  # with `expected`, it must be that question
    assert passes("李雷会做饭吗?", {"type": "question", "expected": "李雷会做饭吗？"})  # half-width mark
    assert passes("Does it work?", {"type": "question"})


def test_unknown_type_names_the_valid_ones():
    with pytest.raises(ValueError, match="unknown type 'palindrome'.*json_valid, json_keys, word_count, list_items, question"):
        passes("x", {"type": "palindrome"})


@pytest.mark.parametrize("spec, reason", [
    ({"n": 3}, "no 'type'"),
    ({"type": "word_count"}, "missing 'n'"),
    ({"type": "word_count", "n": 3, "units": "char"}, "unknown key 'units'"),
    ({"type": "word_count", "n": 0}, "positive integer"),
    ({"type": "word_count", "n": 3, "unit": "token"}, "'unit' must be one of word, char"),
    ({"type": "list_items", "n": 2, "relation": "about"}, "'relation' must be one of"),
    ({"type": "json_keys", "keys": []}, "non-empty list"),
    ({"type": "json_keys", "keys": ["a", "a"]}, "duplicates"),
    ({"type": "question", "expected": "The tiger is at home."}, "must be a question"),
    ("word_count", "must be a mapping"),
])
def test_validate_spec_reasons(spec, reason):
    assert reason in validate_spec(spec)
    with pytest.raises(ValueError, match="check spec"):
        passes("x", spec)
