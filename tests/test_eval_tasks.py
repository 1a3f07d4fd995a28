"""Eval tasks as a registry: every task file is found, a task added from outside the eval stage runs
with it (reading another task's answers through `needs`), and unknown tasks fail at plan time."""
import pytest
from conftest import compose

from pipeline.errors import ConfigError
from pipeline.evaluation import registry


def test_every_shipped_task_is_registered_in_run_order():
    assert registry.names() == ("speed", "math", "reasoning", "instruct", "judge", "tools", "mcq", "code",
                                "perplexity", "lm_eval")
    assert registry.default_budgets() == {"math": 256, "instruct": 256, "tools": 128, "code": 256}
    assert [s.name for s in registry.with_needs(["judge", "reasoning"])] == ["math", "reasoning", "instruct", "judge"]


def test_a_new_task_is_one_registration_and_no_edit_to_the_eval_stage(tmp_path, monkeypatch):
    """A task in the user's own module: registered on import, and known to the eval stage's child process."""
    from pipeline.engine.runner import run_chain

    (tmp_path / "my_tasks.py").write_text(
        "from pipeline.evaluation import registry\n\n\n"
        "@registry.task('answer_length', order=90, headlines=('answer_length_mean',), needs=('math',))\n"
        "def answer_length(ev):\n"
        "    answers = ev.shared['math']\n"
        "    return {'answer_length_mean': round(sum(len(a.text) for a in answers) / len(answers), 2)}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    __import__("my_tasks")
    try:
        cfg = compose(["logger=none", "~stages.eval_base", "~stages.sft", "stages.eval_tuned.inputs=[base]",
                       "stages.eval_tuned.tasks=[answer_length]", "stages.eval_tuned.limit=4", "stages.eval_tuned.compare_with=null",
                       f"paths.store={tmp_path / 'store'}"])
        record = run_chain(cfg, tmp_path / "run", "quickstart", [], None)
        metrics = record["stages"][0]["metrics"]
        assert metrics["math_n"] == 4 and metrics["answer_length_mean"] > 0   # math ran first, for its answers
    finally:
        registry._TASKS.pop("answer_length")


def test_unknown_task_names_the_valid_ones(tmp_path):
    from pipeline.engine.plan import build_plan
    from pipeline.engine.store import Store

    with pytest.raises(ConfigError, match=r"stages\.eval_base\.tasks: unknown task\(s\) \['maths'\]; valid: speed, math"):
        build_plan(compose(["logger=none", "stages.eval_base.tasks=[maths]"]), Store(tmp_path), device="cpu")
