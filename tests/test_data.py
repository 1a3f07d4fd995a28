"""pipeline.data.datasets: every format reaches its canonical shape, every bad record is named by path:line."""
import json

import pyarrow
import pyarrow.parquet
import pytest
from omegaconf import OmegaConf

from pipeline.data import datasets as data
from pipeline.data.datasets import DataError, DatasetSpec

SYSTEM = {"role": "system", "content": "Be brief."}
USER = {"role": "user", "content": "What is 2+2?"}
ASSISTANT = {"role": "assistant", "content": "4"}
WRONG = {"role": "assistant", "content": "5"}


@pytest.fixture(autouse=True, params=["records", "arrow"])
def check_path(request, monkeypatch):
    """Every test twice: files checked record by record, and (as large files are) through Arrow batches and the
    column screens. The messages must be the same: the screens only choose which records the converters see."""
    if request.param == "arrow":
        monkeypatch.setattr(data, "ARROW_FROM_BYTES", 0)
    return request.param


def write_jsonl(path, records):
    """Records are dicts (dumped) or raw strings (written as-is, to make bad lines)."""
    lines = [r if isinstance(r, str) else json.dumps(r) for r in records]
    path.write_text("\n".join(lines) + "\n")
    return path


def spec_for(path, **fields):
    return DatasetSpec(path=str(path), **fields)


def error_of(spec, purpose):
    with pytest.raises(DataError) as caught:
        data.check(spec, purpose)
    return str(caught.value)


# --- each format x each purpose it serves ------------------------------------------------------

ROUND_TRIPS = [
    ("messages", "sft", {"messages": [SYSTEM, USER, ASSISTANT]},
     {"messages": [SYSTEM, USER, ASSISTANT]}),
    ("alpaca", "sft", {"instruction": "Add.", "input": "2+2", "output": "4", "system": "Be brief."},
     {"messages": [SYSTEM, {"role": "user", "content": "Add.\n\n2+2"}, ASSISTANT]}),
    ("alpaca", "sft", {"instruction": "What is 2+2?", "input": "", "output": "4"},
     {"messages": [USER, ASSISTANT]}),
    ("sharegpt", "sft", {"conversations": [{"from": "system", "value": "Be brief."},
                                           {"from": "human", "value": "What is 2+2?"},
                                           {"from": "function_call", "value": '{"name": "add"}'},
                                           {"from": "observation", "value": "4"},
                                           {"from": "gpt", "value": "4"}]},
     {"messages": [SYSTEM, USER, {"role": "assistant", "content": '{"name": "add"}'},
                   {"role": "tool", "content": "4"}, ASSISTANT]}),
    ("preference", "preference", {"prompt": [USER], "chosen": [ASSISTANT], "rejected": [WRONG]},
     {"prompt": [USER], "chosen": [ASSISTANT], "rejected": [WRONG]}),
    ("preference", "preference", {"prompt": "What is 2+2?", "chosen": "4", "rejected": "5"},
     {"prompt": [USER], "chosen": [ASSISTANT], "rejected": [WRONG]}),
    ("preference", "preference", {"chosen": [SYSTEM, USER, ASSISTANT], "rejected": [SYSTEM, USER, WRONG]},
     {"prompt": [SYSTEM, USER], "chosen": [ASSISTANT], "rejected": [WRONG]}),
    ("prompt", "prompt", {"prompt": "What is 2+2?", "answer": 4, "id": "q1"},
     {"prompt": [USER], "answer": "4", "id": "q1"}),
    ("prompt", "prompt", {"prompt": [SYSTEM, USER]},
     {"prompt": [SYSTEM, USER], "answer": None}),
    ("gsm8k", "prompt", {"question": "What is 2+2?", "answer": "2+2=4\n#### 4", "level": 1},
     {"prompt": [USER], "answer": "4", "level": 1}),
    ("messages", "prompt", {"messages": [SYSTEM, USER, ASSISTANT]},
     {"prompt": [SYSTEM, USER], "answer": "4"}),
    ("gsm8k", "gsm8k", {"question": "Total?", "answer": "1000+234=1234\n#### $1,234.0"},
     {"question": "Total?", "answer": "1000+234=1234\n#### $1,234.0", "target": "1234"}),
    ("text", "text", {"text": "Once upon a time."}, {"text": "Once upon a time."}),
]


@pytest.mark.parametrize("fmt", ["auto", "explicit"])
@pytest.mark.parametrize("source_format,purpose,record,expected", ROUND_TRIPS)
def test_format_round_trips_to_canonical_shape(tmp_path, fmt, source_format, purpose, record, expected):
    path = write_jsonl(tmp_path / "d.jsonl", [record, record])
    spec = spec_for(path, format=source_format if fmt == "explicit" else "auto")
    assert data.check(spec, purpose).records == 2
    assert data.load(spec, purpose) == [expected, expected]


def test_openai_tool_call_messages_keep_their_extra_keys(tmp_path):
    call = {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type": "function"}]}
    result = {"role": "tool", "content": "4", "tool_call_id": "c1"}
    path = write_jsonl(tmp_path / "d.jsonl", [{"messages": [USER, call, result, ASSISTANT]}])
    assert data.load(spec_for(path), "sft") == [{"messages": [USER, {**call, "content": ""}, result, ASSISTANT]}]


@pytest.mark.parametrize("answer,target", [
    ("#### 72", "72"), ("#### 1,000", "1000"), ("#### $5", "5"), ("#### 18.0", "18"),
    ("#### -3", "-3"), ("#### 2.50", "2.5"), ("a #### 1\nb #### 7.", "7"),
    ("#### 007", "7"), ("#### 12345678901234567890", "12345678901234567890"),
    ("no marker", None), ("#### seven", None),
])
def test_gsm8k_target_normalises_the_last_number(answer, target):
    from pipeline.data.formats import gsm8k_target
    from pipeline.answers import extract_answer

    assert gsm8k_target(answer) == target
    if target is not None:  # one normaliser: a model answering the same number scores as the target
        assert extract_answer(answer) == target


# --- sources -------------------------------------------------------------------------------------

def test_csv_source_numbers_lines_from_the_header(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("instruction,input,output\nAdd.,2+2,4\n,,4\n")
    assert error_of(spec_for(path), "sft") == f"{path}:3: 'instruction' is empty"
    path.write_text("instruction,input,output\nAdd.,2+2,4\nWhat is 2+2?,,4\n")
    assert data.load(spec_for(path), "sft")[1] == {"messages": [USER, ASSISTANT]}


def test_json_list_source_names_items(tmp_path):
    path = tmp_path / "d.json"
    path.write_text(json.dumps([{"text": "a"}, {"text": ""}, "b"]))
    assert error_of(spec_for(path), "text") == (f"{path}: item 2: 'text' is empty\n"
                                                f"{path}: item 3: expected a JSON object, got string")
    path.write_text(json.dumps({"text": "a"}))
    assert error_of(spec_for(path), "text") == f"{path}: expected a JSON list of objects, got object"


def test_parquet_source_names_rows(tmp_path):
    path = tmp_path / "d.parquet"
    rows = [{"question": "Q1", "answer": "#### 1"}, {"question": "Q2", "answer": "two"}]
    pyarrow.parquet.write_table(pyarrow.Table.from_pylist(rows), path)
    assert error_of(spec_for(path), "gsm8k") == f"{path}: row 2: 'answer' has no number after '####'"
    assert data.load(spec_for(path, limit=1), "gsm8k") == [{"question": "Q1", "answer": "#### 1", "target": "1"}]


# --- bad records: exact `path:line: reason` ------------------------------------------------------

def test_malformed_json_line_and_blank_lines(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"text": "a"}, "", '{"text": "b" "c"}'])
    assert error_of(spec_for(path), "text") == f"{path}:3: invalid JSON (Expecting ',' delimiter: column 14)"


def test_bad_role(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"messages": [{"role": "bot", "content": "hi"}, ASSISTANT]}])
    assert error_of(spec_for(path), "sft") == (
        f"{path}:1: messages[0]: invalid role 'bot' (expected one of system, user, assistant, tool)")


def test_conversation_must_end_with_the_assistant(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"messages": [ASSISTANT, USER]}])
    assert error_of(spec_for(path), "sft") == f"{path}:1: 'messages' must end with an assistant message, not 'user'"


def test_missing_key(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"instruction": "Add.", "output": "4"}, {"instruction": "Add."}])
    assert error_of(spec_for(path, format="alpaca"), "sft") == f"{path}:2: missing key 'output' (found: instruction)"


def test_preference_without_rejected(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "Q", "chosen": "A", "rejected": "B"},
                                              {"prompt": "Q", "chosen": "A"}])
    assert error_of(spec_for(path), "preference") == f"{path}:2: missing key 'rejected' (found: prompt, chosen)"


def test_preference_with_identical_sides(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "Q", "chosen": "A", "rejected": "A"}])
    assert error_of(spec_for(path), "preference") == f"{path}:1: chosen and rejected are identical"


def test_gsm8k_answer_without_marker(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"question": "Q", "answer": "The answer is 4."}])
    assert error_of(spec_for(path), "gsm8k") == f"{path}:1: 'answer' has no number after '####'"


def test_errors_are_capped(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"text": "ok"}] + [{"text": ""}] * 8)
    lines = error_of(spec_for(path), "text").splitlines()
    assert lines == [f"{path}:{n}: 'text' is empty" for n in range(2, 7)] + ["... and 3 more"]


# --- whole-file problems ------------------------------------------------------------------------

def test_missing_file_says_where_relative_paths_resolve(tmp_path, monkeypatch):
    from pipeline import paths

    monkeypatch.setattr(paths, "PROJECT_ROOT", tmp_path / "root")
    monkeypatch.chdir(tmp_path)
    assert error_of(DatasetSpec(path="embedded/data/x.jsonl"), "sft") == (
        f"embedded/data/x.jsonl: file not found (tried {tmp_path}/embedded/data/x.jsonl and "
        f"{tmp_path}/root/embedded/data/x.jsonl)")


def test_relative_paths_resolve_from_the_working_folder_then_the_project_root(tmp_path, monkeypatch):
    from pipeline import paths

    monkeypatch.setattr(paths, "PROJECT_ROOT", tmp_path)
    (tmp_path / "data").mkdir()
    write_jsonl(tmp_path / "data" / "x.jsonl", [{"text": "a"}, '{"text": 1}'])
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert paths.resolve("data/x.jsonl") == tmp_path / "data" / "x.jsonl"   # from the project root
    assert paths.resolve("/abs/x.jsonl").as_posix() == "/abs/x.jsonl"
    assert error_of(DatasetSpec(path="data/x.jsonl"), "text") == "data/x.jsonl:2: 'text' must be a string, got number"
    (elsewhere / "data").mkdir()
    write_jsonl(elsewhere / "data" / "x.jsonl", [{"text": "b"}])
    assert paths.resolve("data/x.jsonl") == elsewhere / "data" / "x.jsonl"  # the working folder wins


def test_unknown_extension(tmp_path):
    path = tmp_path / "d.txt"
    path.write_text("hello\n")
    assert error_of(spec_for(path), "text") == f"{path}: unknown extension '.txt' (valid: .jsonl, .json, .csv, .parquet)"


def test_format_that_cannot_feed_the_purpose(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"text": "a"}])
    assert error_of(spec_for(path, format="text"), "preference") == (
        f"{path}: format 'text' cannot feed a preference stage: needs prompt/chosen/rejected")
    assert error_of(spec_for(path), "preference") == (
        f"{path}: format 'text' (auto-detected) cannot feed a preference stage: needs prompt/chosen/rejected")


def test_undetectable_format_lists_keys_and_formats(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"foo": 1, "bar": 2}])
    assert error_of(spec_for(path), "sft") == (
        f"{path}:1: cannot detect the format from keys [foo, bar]; set format: to one of "
        "messages, alpaca, sharegpt, preference, unpaired, prompt, gsm8k, text, or rename keys with columns:")


def test_empty_file(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", ["", "  "])
    assert error_of(spec_for(path), "text") == f"{path}: empty file (no records)"


# --- spec options --------------------------------------------------------------------------------

def test_limit_keeps_the_first_records_and_ignores_the_rest(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"text": "a"}, {"text": "b"}, "not json"])
    assert data.load(spec_for(path, limit=2), "text") == [{"text": "a"}, {"text": "b"}]
    assert error_of(spec_for(path, limit=0), "text") == f"{path}: limit must be a positive number of records, got 0"


def test_columns_rename_source_keys(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"query": "What is 2+2?", "good": "4", "bad": "5"},
                                              {"query": "What is 2+2?", "good": "4"}])
    spec = spec_for(path, columns={"query": "prompt", "good": "chosen", "bad": "rejected"})
    assert error_of(spec, "preference") == f"{path}:2: missing key 'rejected' (found: prompt, chosen)"
    assert data.load(spec_for(path, columns=spec.columns, limit=1), "preference") == [
        {"prompt": [USER], "chosen": [ASSISTANT], "rejected": [WRONG]}]


def test_spec_works_as_structured_config_and_plain_mapping(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"body": "a"}])
    node = OmegaConf.merge(OmegaConf.structured(DatasetSpec), {"path": str(path), "columns": {"body": "text"}})
    assert data.load(OmegaConf.to_object(node), "text") == [{"text": "a"}]
    assert data.load(node, "text") == [{"text": "a"}]


# --- hub ids: datasets.load_dataset is the network boundary, faked here ---------------------------

def test_hub_failure_is_one_line(monkeypatch):
    import datasets

    def fake_hub_unreachable(path, name=None, split=None, revision=None, **options):
        raise ConnectionError("Couldn't reach the Hub\nretry later")

    monkeypatch.setattr(datasets, "load_dataset", fake_hub_unreachable)
    assert error_of(DatasetSpec(path="org/name"), "sft") == (
        "dataset 'org/name': cannot be loaded from the hub (ConnectionError: Couldn't reach the Hub); "
        "use a local file or check the id/network")


def test_hub_rows_are_validated_like_files(monkeypatch):
    import datasets

    calls = []

    def fake_hub(path, name=None, split=None, revision=None, streaming=False):
        calls.append((path, name, split, revision, streaming))
        rows = [{"question": "Q", "answer": "#### 3"}, {"question": "Q", "answer": "three"}]
        return datasets.Dataset.from_list(rows).to_iterable_dataset()

    monkeypatch.setattr(datasets, "load_dataset", fake_hub)
    spec = DatasetSpec(path="openai/gsm8k", subset="main", split="test")
    assert error_of(spec, "gsm8k") == "dataset 'openai/gsm8k' test:1: 'answer' has no number after '####'"
    assert calls == [("openai/gsm8k", "main", "test", None, True)]  # streamed: the plan reads a sample only


# --- fingerprints --------------------------------------------------------------------------------

def test_fingerprint_follows_file_content(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"text": "a"}])
    first = data.fingerprint(spec_for(path))
    assert data.fingerprint(spec_for(path)) == first and len(first) == 64
    write_jsonl(path, [{"text": "a"}, {"text": "b"}])
    assert data.fingerprint(spec_for(path)) != first


def test_fingerprint_of_hub_id_names_it():
    # offline (tests never reach a hub) and not cached: the revision cannot be resolved, and says so
    assert data.fingerprint(DatasetSpec(path="openai/gsm8k", subset="main")) == \
        "hub:openai/gsm8k:main:train@main (unresolved)"
    pinned = DatasetSpec(path="openai/gsm8k", subset="main", revision="e" * 40)
    assert data.fingerprint(pinned) == f"hub:openai/gsm8k:main:train@{'e' * 40}"


def test_unknown_purpose_is_a_programming_error(tmp_path):
    with pytest.raises(ValueError, match="unknown data purpose 'rl'"):
        data.check(spec_for(write_jsonl(tmp_path / "d.jsonl", [{"text": "a"}])), "rl")


def test_answers_are_read_as_a_person_would():
    from pipeline.answers import extract_answer

    cases = {
        "So 3 + 4 = 7.\n#### 7": "7",
        "The total is \\boxed{1{,}234} dollars. Check: 5 + 5": "1234",
        "<think>maybe 5, or 6</think>The answer is 12. Then 3 more are left over.": "12",
        "<think>5 and 6 and": None,  # cut while thinking: no answer yet
        "**Answer:** 42\n\nNote: 7 apples were eaten.": "42",
        "Answer: 42\n\nNote: 7 apples were eaten.": "42",
        "\\boxed{\\frac{1}{2}} of the cake, so 3 slices": "0.5",
        "```python\nprint(6 * 7)\n```\nIt prints 42": "42",
        "x = 3, y = 4": "4",
    }
    for text, expected in cases.items():
        assert extract_answer(text) == expected, text
