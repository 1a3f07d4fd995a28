"""pipeline.evaluation.scoring.codeexec: pass@k golden values, and candidates run limited, isolated and timed out."""
import json
import resource
import time
from math import comb
from pathlib import Path

import pytest

from pipeline.data.datasets import DataError
from pipeline.evaluation.scoring.codeexec import evaluate, load_code_problems, pass_at_k, run_candidate

DATA = Path(__file__).parent / "data"
ADD = "def add(a, b):\n    return a + b\n"
ADD_TESTS = "assert add(1, 2) == 3\nassert add(-1, 1) == 0\n"


# --- pass@k ------------------------------------------------------------------------------------

def test_pass_at_k_golden_values():
    assert pass_at_k(5, 0, 1) == 0.0
    assert pass_at_k(5, 0, 5) == 0.0
    assert pass_at_k(5, 5, 1) == 1.0
    assert pass_at_k(5, 5, 5) == 1.0
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)
    assert pass_at_k(10, 3, 5) == pytest.approx(1 - 21 / 252)
    assert pass_at_k(10, 3, 5) == pytest.approx(1 - comb(7, 5) / comb(10, 5))
    assert pass_at_k(10, 6, 5) == 1.0  # fewer than k failures: some draw of k always passes
    assert pass_at_k(200, 1, 100) == pytest.approx(0.5)
    assert 0.0 <= pass_at_k(1000, 7, 50) <= 1.0  # the binomials here have ~85 digits


def test_pass_at_k_rejects_impossible_counts():
    for n, c, k in [(5, 6, 1), (5, -1, 1), (5, 1, 0), (3, 1, 5)]:
        with pytest.raises(ValueError):
            pass_at_k(n, c, k)


# --- running candidates -------------------------------------------------------------------------

def test_correct_solution_passes_and_wrong_one_fails():
    good = run_candidate(ADD, ADD_TESTS)
    assert good["passed"] and good["status"] == "passed"
    bad = run_candidate("def add(a, b):\n    return a - b\n", ADD_TESTS)
    assert not bad["passed"] and bad["status"] == "failed"
    assert "AssertionError" in bad["stderr_tail"]


def test_broken_programs_are_errors():
    assert run_candidate("def add(a, b:\n    return a\n", ADD_TESTS)["status"] == "error"  # syntax
    assert run_candidate("import not_a_module_at_all\n", ADD_TESTS)["status"] == "error"
    # exiting early must not count as passing the tests it skipped
    early = run_candidate("import sys\nsys.exit(0)\n", "assert False\n")
    assert not early["passed"] and early["status"] == "error"
    assert run_candidate(ADD + "import os\nos._exit(0)\n", ADD_TESTS)["status"] == "error"


def test_infinite_loop_times_out():
    started = time.monotonic()
    result = run_candidate("while True:\n    pass\n", ADD_TESTS, timeout_s=1.0)
    elapsed = time.monotonic() - started
    assert result["status"] == "timeout" and not result["passed"]
    assert elapsed < 1.0 + 1.5
    sleeper = run_candidate(ADD, "import time\ntime.sleep(60)\n", timeout_s=1.0)
    assert sleeper["status"] == "timeout"


def test_memory_hog_is_stopped_without_hurting_the_tests():
    before = resource.getrlimit(resource.RLIMIT_AS)
    hog = "chunks = []\nwhile True:\n    chunks.append(bytearray(16 * 1024 * 1024))\n"
    result = run_candidate(hog, ADD_TESTS, timeout_s=5.0, memory_mb=256)
    assert result["status"] in ("memory", "error") and not result["passed"]
    at_once = run_candidate("data = bytearray(4 * 1024 ** 3)\n", ADD_TESTS, memory_mb=256)
    assert at_once["status"] in ("memory", "error")
    assert resource.getrlimit(resource.RLIMIT_AS) == before  # the limits were the child's alone
    assert len(bytearray(300 * 1024 * 1024)) == 300 * 1024 * 1024  # and this process still allocates


def test_parent_secrets_are_not_inherited(monkeypatch):
    monkeypatch.setenv("TUNECHAIN_TEST_SECRET", "hunter2")
    hidden = run_candidate("import os\n", "assert 'TUNECHAIN_TEST_SECRET' not in os.environ\n"
                                          "assert 'hunter2' not in repr(os.environ)\n")
    assert hidden["status"] == "passed", hidden["stderr_tail"]
    seen = run_candidate("import os\n", "assert os.environ.get('TUNECHAIN_TEST_SECRET') == 'hunter2'\n")
    assert seen["status"] == "failed"


def test_runs_in_a_fresh_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = run_candidate("import os\nopen('left_behind.txt', 'w').write('x')\nwhere = os.getcwd()\n",
                           f"assert where != {str(tmp_path)!r}\n")
    assert result["status"] == "passed", result["stderr_tail"]
    assert not (tmp_path / "left_behind.txt").exists()


# --- problems and evaluation --------------------------------------------------------------------

def test_load_code_problems_sample():
    problems = load_code_problems(DATA / "code_sample.jsonl")
    assert [p["task_id"] for p in problems] == ["tiny/0", "tiny/1", "tiny/2"]
    assert all(p["entry_point"] and "def check(candidate)" in p["test"] for p in problems)


def test_load_code_problems_errors_name_path_and_line(tmp_path):
    good = {"task_id": "t/0", "prompt": "def f():\n", "test": "def check(c):\n    pass\n", "entry_point": "f"}
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join([json.dumps(good),
                               json.dumps({"task_id": "t/1", "prompt": "def f():\n"}),
                               json.dumps({**good, "task_id": "t/2", "entry_point": "not a name"}),
                               json.dumps({**good, "task_id": "t/3", "test": 5}),
                               json.dumps(good),
                               "{oops"]) + "\n")
    with pytest.raises(DataError) as caught:
        load_code_problems(path)
    message = str(caught.value)
    assert f"{path}:2: missing 'test'" in message
    assert f"{path}:3: 'entry_point' must be a Python name" in message
    assert f"{path}:4: 'test' must be a string" in message
    assert f"{path}:5: duplicate task_id 't/0' (first at {path}:1)" in message
    assert f"{path}:6: invalid JSON" in message
    assert f"{path}:1:" not in message.replace(f"first at {path}:1", "")


def test_evaluate_pass_at_k_over_problems():
    problems = load_code_problems(DATA / "code_sample.jsonl")
    right = [p["canonical_solution"] for p in problems]
    wrong = ["    return None\n"] * 3
    # problem 0: 5 of 5 right; problem 1: 1 of 5 (one full program repeating the prompt); problem 2: 0 of 5
    completions = {
        "tiny/0": [right[0]] * 5,
        "tiny/1": [problems[1]["prompt"] + right[1]] + [wrong[1]] * 4,
        "tiny/2": [wrong[2], "    while True:\n        pass\n", "    return len(\n", wrong[2], wrong[2]],
    }
    report = evaluate(problems, completions, k_values=(1, 5, 10), timeout_s=2.0, workers=2)
    assert report["pass@1"] == pytest.approx((1.0 + 0.2 + 0.0) / 3)
    assert report["pass@5"] == pytest.approx((1.0 + 1.0 + 0.0) / 3)
    assert report["code_skipped_k"] == [10] and "pass@10" not in report
    assert [(p["n"], p["c"]) for p in report["per_problem"]] == [(5, 5), (5, 1), (5, 0)]
    assert report["per_problem"][2]["statuses"] == ["failed", "timeout", "error", "failed", "failed"]
    assert report["code_status_counts"] == {"passed": 6, "failed": 7, "timeout": 1, "error": 1, "memory": 0}
    listed = evaluate(problems, [[c] for c in right], k_values=(1,))
    assert listed["pass@1"] == 1.0


def test_evaluate_rejects_mismatched_completions():
    problems = load_code_problems(DATA / "code_sample.jsonl")
    with pytest.raises(ValueError, match="no completions"):
        evaluate(problems, {"tiny/0": ["x"]})
    with pytest.raises(ValueError, match="3 problems"):
        evaluate(problems, [["x"]])
