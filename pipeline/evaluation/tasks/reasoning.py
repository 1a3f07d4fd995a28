"""Features of the math answers: think blocks, self-checks, backtracking (scoring/reasoning.py)."""
from __future__ import annotations

from pipeline.evaluation.registry import EvalRun, task
from pipeline.evaluation.scoring.reasoning import summarise


@task("reasoning", order=21, headlines=("reasoning_has_think",), needs=("math",), percent=("reasoning_has_think",))
def run(ev: EvalRun) -> dict:
    """Read from the math task's answers; generates nothing of its own."""
    return summarise([o.text for o in ev.shared["math"]])
