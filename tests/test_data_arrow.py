"""Data as Arrow: the column screens never pass a record the converters reject, a file version is checked
once, stages get datasets.Dataset objects, and hub splits are sampled at plan time and checked in full
when prepared."""
import json
import random

import pyarrow as pa
import pytest

from pipeline.data import arrow, check_cache, datasets as data, records
from pipeline.data.datasets import DataError, DatasetSpec
from pipeline.data.formats import converter
from pipeline.data.problems import Invalid
from pipeline.data.screens import screen_for

CONTENTS = ["4", "", "  ", None, "a longer reply", "4", 5]
ROLES = ["user", "assistant", "system", "tool", "bot", None]


def _message(rng):
    message = {"role": rng.choice(ROLES), "content": rng.choice(CONTENTS)}
    if rng.random() < 0.1:
        message["tool_calls"] = [{"name": "f"}]
    return message


def _messages(rng):
    return [_message(rng) for _ in range(rng.randint(0, 4))]


def _side(rng, as_text):
    if as_text:
        return rng.choice(["4", "5", "", " "])
    return rng.choice([_messages(rng), [{"role": "assistant", "content": "4"}], [{"role": "assistant", "content": "5"}]])


# Each generator gets the batch's mode: strings or message lists (one Arrow type per column and batch).
RECORDS = {
    ("messages", "sft"): lambda rng, as_text: {"messages": _messages(rng)},
    ("alpaca", "sft"): lambda rng, as_text: {"instruction": rng.choice(CONTENTS), "output": rng.choice(CONTENTS),
                                             "input": rng.choice(["", "x", None])},
    ("preference", "preference"): lambda rng, as_text: {
        "prompt": rng.choice(["What?", ""]) if as_text else _messages(rng),
        "chosen": _side(rng, as_text), "rejected": _side(rng, as_text)},
    ("prompt", "prompt"): lambda rng, as_text: {"prompt": rng.choice(["What?", "", " "]) if as_text else _messages(rng),
                                               "answer": rng.choice(["4", None] if as_text else [4, None])},
    ("text", "text"): lambda rng, as_text: {"text": rng.choice(CONTENTS)},
}


def _rejected(convert, row) -> bool:
    try:
        convert({k: v for k, v in row.items() if v is not None})
        return False
    except Invalid:
        return True


@pytest.mark.parametrize("fmt,purpose", list(RECORDS))
def test_screens_flag_every_record_the_converters_reject(fmt, purpose):
    """Random records, most of them invalid in some way: each rejected one must be flagged. A batch only has
    one Arrow type per column, so records are grouped by the type Arrow gives them."""
    rng = random.Random(0)
    convert, screen = converter(fmt, purpose, "x"), screen_for(fmt, purpose)
    checked = rejected = 0
    for _ in range(1000):
        as_text = rng.random() < 0.5
        rows = [RECORDS[(fmt, purpose)](rng, as_text) for _ in range(4)]
        try:
            batch = pa.RecordBatch.from_pylist(rows)
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            continue  # mixed types: such a file is read record by record, screens never see it
        rows = batch.to_pylist()  # as Arrow gives them back: missing keys are None
        flagged = screen(batch)
        for index, row in enumerate(rows):
            if _rejected(convert, row):
                rejected += 1
                assert flagged[index], (fmt, purpose, row)
        checked += len(rows)
    assert checked > 500 and 0 < rejected < checked  # the generator makes both kinds


def _write(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


CHAT = {"messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]}


def test_a_checked_file_version_is_not_read_again(tmp_path, monkeypatch):
    cache = check_cache.CheckCache(tmp_path / "store" / ".data")
    spec = DatasetSpec(path=str(_write(tmp_path / "chats.jsonl", [CHAT] * 3)))
    assert data.check(spec, "sft", cache).records == 3
    digests = []
    monkeypatch.setattr(check_cache, "content_digest", lambda path: digests.append(path) or "x")

    def no_reading(*args):
        raise AssertionError("a record was read")

    monkeypatch.setattr(records, "canonical", no_reading)
    again = data.check(spec, "sft", cache)
    assert (again.records, again.format, again.cached, digests) == (3, "messages", True, [])
    monkeypatch.undo()
    _write(tmp_path / "chats.jsonl", [CHAT] * 5)  # a new version: hashed and checked again
    assert data.check(spec, "sft", cache).records == 5
    assert data.check(DatasetSpec(path=spec.path, limit=2), "sft", cache).records == 2  # the limit is part of the key


def test_a_bad_file_is_remembered_with_its_error(tmp_path):
    cache = check_cache.CheckCache(tmp_path / ".data")
    spec = DatasetSpec(path=str(_write(tmp_path / "chats.jsonl", [CHAT, {"messages": []}])))
    for _ in range(2):
        with pytest.raises(DataError, match=r"chats\.jsonl:2: 'messages' is empty"):
            data.check(spec, "sft", cache)
    assert len(list((tmp_path / ".data" / "checks").iterdir())) == 1


def test_a_large_file_with_a_malformed_line_is_still_named_by_line(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "ARROW_FROM_BYTES", 0)
    path = tmp_path / "chats.jsonl"
    path.write_text(json.dumps(CHAT) + "\n{oops\n" + json.dumps(CHAT) + "\n")
    with pytest.raises(arrow.NotArrow):
        arrow.check_file(DatasetSpec(path=str(path)), "sft")
    with pytest.raises(DataError, match=r"chats\.jsonl:2: invalid JSON"):
        data.check(DatasetSpec(path=str(path)), "sft")


def test_stages_get_arrow_datasets_in_their_form(tmp_path, monkeypatch):
    import datasets

    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf"))
    prompts = _write(tmp_path / "prompts.jsonl", [{"prompt": "2+2?", "answer": 4, "level": 1},
                                                   {"prompt": [{"role": "user", "content": "3+3?"}], "answer": "6"}])
    rows = data.prepared(DatasetSpec(path=str(prompts)), "prompt")
    assert isinstance(rows, datasets.Dataset)
    assert rows.to_list() == [
        {"prompt": [{"role": "user", "content": "2+2?"}], "answer": "4", "level": 1},
        {"prompt": [{"role": "user", "content": "3+3?"}], "answer": "6", "level": None}]
    pairs = _write(tmp_path / "pairs.jsonl", [{"prompt": "2+2?", "chosen": "4", "rejected": "5"}])
    assert data.prepared(DatasetSpec(path=str(pairs)), "preference").to_list() == [
        {"prompt": [{"role": "user", "content": "2+2?"}], "chosen": [{"role": "assistant", "content": "4"}],
         "rejected": [{"role": "assistant", "content": "5"}]}]
    chats = DatasetSpec(path=str(_write(tmp_path / "chats.jsonl", [CHAT] * 4)))
    lengths = data.prepared(chats, "sft", lambda record: {"turns": len(record["messages"])})
    assert lengths.to_list() == [{"turns": 2}] * 4


def test_a_file_arrow_cannot_type_is_prepared_record_by_record(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf"))
    mixed = _write(tmp_path / "mixed.jsonl", [{"prompt": "a?", "answer": 4}] * 3 + [{"prompt": "b?", "answer": "x"}])
    rows = data.prepared(DatasetSpec(path=str(mixed)), "prompt")
    assert [r["answer"] for r in rows] == ["4", "4", "4", "x"]


# --- hub splits: datasets.load_dataset is the network boundary, faked here ---------------------------

def test_hub_split_is_sampled_at_plan_time_and_checked_in_full_when_prepared(monkeypatch, tmp_path):
    import datasets

    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf"))
    rows = [{"question": "Q", "answer": "#### 3"}] * 100 + [{"question": "Q", "answer": "three"}]
    real_load = datasets.load_dataset

    def fake_hub(path, name=None, split=None, revision=None, streaming=False, **options):
        if path in ("json", "csv", "parquet"):
            return real_load(path, name=name, split=split, **options)
        table = datasets.Dataset.from_list(rows)
        return table.to_iterable_dataset() if streaming else table

    monkeypatch.setattr(datasets, "load_dataset", fake_hub)
    spec = DatasetSpec(path="openai/gsm8k", subset="main", split="test")
    checked = data.check(spec, "gsm8k")
    assert (checked.sampled, checked.format) == (data.HUB_SAMPLE, "gsm8k")  # the bad row 100 is not in the sample
    with pytest.raises(DataError, match=r"^dataset 'openai/gsm8k' test:100: 'answer' has no number after '####'$"):
        data.prepared(spec, "gsm8k")
    assert len(data.prepared(DatasetSpec(path="openai/gsm8k", split="test", limit=100), "gsm8k")) == 100


def test_prepared_csv_cells_are_the_record_readers_strings(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf"))
    path = tmp_path / "prompts.csv"
    path.write_text("prompt,answer,level\nWhat is 2+2?,4,\nWhat is 3?,007,1\n")
    spec = DatasetSpec(path=str(path))
    assert data.prepared(spec, "prompt").to_list() == data.load(spec, "prompt") == [
        {"prompt": [{"role": "user", "content": "What is 2+2?"}], "answer": "4", "level": ""},
        {"prompt": [{"role": "user", "content": "What is 3?"}], "answer": "007", "level": "1"}]


def test_blank_means_what_python_strip_means():
    """The screens' 'empty' is the converters' `not value.strip()`, character for character."""
    from pipeline.data.screens import _blank

    chars = [chr(c) for c in range(0x3001) if not 0xD800 <= c <= 0xDFFF]
    values = chars + [c * 3 for c in chars] + ["a", " a ", "", None]
    assert _blank(pa.array(values)).tolist() == [v is None or not v.strip() for v in values]
