"""Generation budgets per eval task: answers that hit the budget are counted and warned about, budgets
are checked at plan time, and the tasks show their progress with prompts per second."""
import pytest
from conftest import compose, tiny_overrides

from pipeline.engine.plan import build_plan
from pipeline.engine.runner import run_chain
from pipeline.engine.store import Store
from pipeline.errors import ConfigError


@pytest.mark.parametrize("override, message", [
    ("stages.eval_base.max_new_tokens.perplexity=8", "max_new_tokens.perplexity: not a generating task"),
    ("stages.eval_base.max_new_tokens.math=0", "max_new_tokens.math: 0; valid: >= 1"),
    ("stages.eval_base.settings.speed.repeats=0", r"stages\.eval_base\.settings\.speed\.repeats: 0; valid: >= 1"),
])
def test_bad_budgets_fail_at_plan_time(override, message, tmp_path):
    with pytest.raises(ConfigError, match=message):
        build_plan(compose(["logger=none", f"+{override}" if "perplexity" in override else override]),
                   Store(tmp_path), device="cpu")


def test_answers_cut_by_the_budget_are_counted_and_warned_about(tiny_llama, tmp_path, capsys):
    cfg = compose([*tiny_overrides(tiny_llama), "~stages.sft", "~stages.eval_tuned", f"paths.store={tmp_path / 's'}",
                   "stages.eval_base.tasks=[math]", "stages.eval_base.max_new_tokens.math=4"])
    metrics = run_chain(cfg, tmp_path / "run", "quickstart", [], None)["stages"][0]["metrics"]
    assert metrics["math_max_new_tokens"] == 4 and metrics["stopped_at_eos"] < 0.5  # a random model rarely stops
    out, _ = capsys.readouterr()
    assert "warning: only" in out and "hit the 4-token budget (raise stages.eval_base.max_new_tokens.math)" in out
    assert "[eval_base] math" in out and "prompt/s" in out  # the progress bar (the stage's child process), with its rate
    assert "stopped_at_eos" in out  # the results table shows it
