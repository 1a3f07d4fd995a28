"""pipeline.evaluation.scoring.mcq: MMLU/C-Eval files load with path:line errors; options are scored by log-likelihood."""
import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from pipeline.data.datasets import DataError
from pipeline.evaluation.scoring.mcq import load_mcq, mcq_continuations, mcq_prompt, score_mcq

DATA = Path(__file__).parent / "data"
ROW = {"question": "What is 2 + 2?", "A": "3", "B": "4", "C": "5", "D": "22", "answer": "B"}


def write_jsonl(path, records):
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in records) + "\n")
    return path


def error_of(path) -> str:
    with pytest.raises(DataError) as caught:
        load_mcq(path)
    return str(caught.value)


# --- loading -----------------------------------------------------------------------------------

def test_samples_load():
    records = load_mcq(DATA / "mcq_sample.jsonl")
    assert len(records) == 5
    assert records[0]["options"] == {"A": "3", "B": "4", "C": "5", "D": "22"}
    assert records[0]["answer"] == "B" and records[0]["subject"] == "elementary_mathematics"
    assert list(records[4]["options"]) == ["A", "B", "C", "D", "E"] and records[4]["subject"] is None
    rows = load_mcq(DATA / "mcq_sample.csv")
    assert [r["answer"] for r in rows] == ["B", "D", "B"]
    assert rows[2]["question"] == "Which gas do plants take in, mostly?" and rows[1]["id"] == "1"


def test_jsonl_errors_name_path_and_line(tmp_path):
    path = write_jsonl(tmp_path / "bad.jsonl", [
        ROW,
        {**{k: v for k, v in ROW.items() if k != "C"}},           # 2: a gap in the letters
        {**ROW, "answer": "E"},                                    # 3: answer not among the options
        {k: v for k, v in ROW.items() if k != "answer"},           # 4: no answer
        {**ROW, "D": "  "},                                        # 5: empty option
        "{not json",                                               # 6
        {**ROW, "answer": "b"},                                    # 7: fine (case and spaces forgiven)
        {"question": "q", "A": "x", "answer": "A"},               # 8: a single option
    ])
    message = error_of(path)
    assert f"{path}:2: missing option 'C'" in message
    assert f"{path}:3: answer 'E' is not among the options A, B, C, D" in message
    assert f"{path}:4: missing answer" in message
    assert f"{path}:5: missing option 'D'" in message
    assert f"{path}:6: invalid JSON" in message
    assert f"{path}:7" not in message
    assert "... and 1 more" in message  # 8 is counted, past the first five


def test_csv_errors_name_path_and_line(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("question,A,B,C,D,answer\n"
                    "What is 2 + 2?,3,4,5,22,B\n"
                    "What is 3 + 3?,6,,7,8,A\n"
                    "What is 4 + 4?,8,9,10,11,F\n")
    message = error_of(path)
    assert f"{path}:3: missing option 'B'" in message
    assert f"{path}:4: answer 'F' is not among the options A, B, C, D" in message
    assert f"{path}:2" not in message


def test_csv_without_header_and_other_files(tmp_path):
    headerless = tmp_path / "abstract_algebra_test.csv"
    headerless.write_text("What is 2 + 2?,3,4,5,22,B\n")
    assert f"{headerless}:1: the header must name question" in error_of(headerless)
    empty = write_jsonl(tmp_path / "empty.jsonl", [])
    assert "empty file" in error_of(empty)
    other = tmp_path / "q.txt"
    other.write_text("x")
    assert "unknown extension" in error_of(other)
    assert "file not found" in error_of(tmp_path / "missing.jsonl")


def test_prompts():
    record = load_mcq(DATA / "mcq_sample.jsonl")[0]
    assert mcq_prompt(record) == ("The following is a multiple choice question about elementary mathematics.\n\n"
                                  "What is 2 + 2?\nA. 3\nB. 4\nC. 5\nD. 22\nAnswer:")
    assert mcq_continuations(record) == {"A": " A", "B": " B", "C": " C", "D": " D"}
    assert mcq_prompt(record, "text") == "Question: What is 2 + 2?\nAnswer:"
    assert mcq_continuations(record, "text")["D"] == " 22"


# --- scoring on the tiny random Llama -----------------------------------------------------------

@pytest.fixture(scope="module")
def lm(tiny_llama):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(1)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(tiny_llama)


@pytest.mark.parametrize("style", ["letter", "text"])
def test_scores_on_tiny_model(lm, style):
    model, tokenizer = lm
    records = load_mcq(DATA / "mcq_sample.jsonl") + load_mcq(DATA / "mcq_sample.csv")
    result = score_mcq(model, tokenizer, records, "cpu", batch_size=4, prompt_style=style)
    assert result["mcq_n"] == 8 and 0.0 <= result["mcq_accuracy"] <= 1.0
    assert set(result["mcq_subject_accuracy"]) == {"elementary_mathematics", "geography", "astronomy",
                                                   "biology", "default"}
    assert all(0.0 <= v <= 1.0 for v in result["mcq_subject_accuracy"].values())
    for record, prediction in zip(records, result["predictions"]):
        assert prediction["predicted"] in record["options"]
        assert set(prediction["loglikelihood"]) == set(record["options"])
        assert all(v < 0 for v in prediction["loglikelihood"].values())
        assert prediction["correct"] == (prediction["predicted"] == record["answer"])
    assert result["mcq_accuracy"] == sum(p["correct"] for p in result["predictions"]) / 8


def manual_loglikelihood(model, tokenizer, prompt: str, continuation: str) -> tuple[float, int]:
    """log p(continuation | prompt) from one plain forward pass over the concatenated ids."""
    import torch

    context = tokenizer(prompt)["input_ids"]
    whole = tokenizer(prompt + continuation)["input_ids"]
    assert whole[:len(context)] == context  # this tokenizer splits cleanly at the boundary
    with torch.no_grad():
        logits = model(torch.tensor([whole])).logits[0].double()
    log_probs = torch.log_softmax(logits, dim=-1)
    total = sum(float(log_probs[t - 1, whole[t]]) for t in range(len(context), len(whole)))
    return total, len(whole) - len(context)


@pytest.mark.parametrize("style", ["letter", "text"])
def test_loglikelihood_matches_a_manual_forward_pass(lm, style):
    model, tokenizer = lm
    records = load_mcq(DATA / "mcq_sample.jsonl")
    result = score_mcq(model, tokenizer, records, "cpu", batch_size=8, prompt_style=style)
    for index in (0, 4):  # a 4-option and the 5-option record, batched with longer/shorter rows
        record, prediction = records[index], result["predictions"][index]
        for letter, continuation in mcq_continuations(record, style).items():
            expected, tokens = manual_loglikelihood(model, tokenizer, mcq_prompt(record, style), continuation)
            assert prediction["loglikelihood"][letter] == pytest.approx(expected, abs=1e-4)
            assert prediction["tokens"][letter] == tokens
            score = expected / tokens if style == "text" else expected
            assert prediction["scores"][letter] == pytest.approx(score, abs=1e-4)


def test_batch_size_does_not_change_scores(lm):
    model, tokenizer = lm
    records = load_mcq(DATA / "mcq_sample.jsonl")
    one = score_mcq(model, tokenizer, records, "cpu", batch_size=1, prompt_style="text")
    many = score_mcq(model, tokenizer, records, "cpu", batch_size=16, prompt_style="text")
    for a, b in zip(one["predictions"], many["predictions"]):
        assert a["loglikelihood"] == pytest.approx(b["loglikelihood"], abs=1e-4)


class Favouring:
    """The tiny model with a large bonus on one token: the letter style must then pick that letter."""

    def __init__(self, model, token_id):
        self.model, self.token_id = model, token_id

    def __call__(self, input_ids, attention_mask):
        logits = self.model(input_ids=input_ids, attention_mask=attention_mask).logits.clone()
        logits[..., self.token_id] += 50.0
        return SimpleNamespace(logits=logits)


def test_a_model_that_favours_c_answers_c(lm):
    model, tokenizer = lm
    records = load_mcq(DATA / "mcq_sample.jsonl")
    (token_c,) = tokenizer(" C", add_special_tokens=False)["input_ids"]
    result = score_mcq(Favouring(model, token_c), tokenizer, records, "cpu")
    assert [p["predicted"] for p in result["predictions"]] == ["C"] * 5
    assert result["mcq_accuracy"] == pytest.approx(1 / 5)  # only record 2's answer is C
    assert result["mcq_subject_accuracy"]["elementary_mathematics"] == 0.5


def test_bad_style_and_no_records(lm):
    model, tokenizer = lm
    with pytest.raises(ValueError, match="prompt_style"):
        score_mcq(model, tokenizer, load_mcq(DATA / "mcq_sample.jsonl"), "cpu", prompt_style="cloze")
    with pytest.raises(ValueError, match="at least one record"):
        score_mcq(model, tokenizer, [], "cpu")
