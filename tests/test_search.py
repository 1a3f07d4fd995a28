"""Searching sweeps (Hydra's Optuna sweeper over a chain): each job returns `sweep.objective`, trials share
the store, and the sweep folder ranks the trials and plots the objective against each parameter."""
from __future__ import annotations

import json
import re

import pytest
import yaml
from conftest import compose, run_main, tiny_overrides

from pipeline.engine.plan import build_plan
from pipeline.engine.store import Store
from pipeline.errors import ConfigError

pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")


@pytest.mark.parametrize("objective, message", [
    ("eval_final.math_accuracy", r"^sweep\.objective: no stage 'eval_final' in this chain; its stages: eval_base, "
                                 r"sft, eval_tuned$"),
    ("math_accuracy", r"^sweep\.objective: 'math_accuracy'; valid: <stage>\.<metric>, e\.g\. eval_tuned\.math_accuracy$"),
])
def test_an_objective_outside_the_chain_is_refused_at_plan_time(objective, message, tmp_path):
    with pytest.raises(ConfigError, match=message):
        build_plan(compose(["logger=none", f"sweep.objective={objective}"]), Store(tmp_path / "store"),
                   recipe="quickstart", device="cpu")


def test_a_recipe_sets_the_objective_and_the_command_line_overrides_it():
    assert compose(["recipe=quickstart_search"]).sweep.objective == "eval_tuned.math_accuracy"  # not the default's null
    assert compose(["recipe=quickstart_search", "sweep.objective=eval_tuned.perplexity"]).sweep.objective == \
        "eval_tuned.perplexity"
    assert compose([]).sweep.objective is None and compose([]).sweep.prune.stage is None


def test_optuna_searches_a_chain_sharing_the_store(tiny_llama, tmp_path):
    """3 trials of recipes/quickstart_search.yaml on a tiny model: Optuna gets each trial's objective (here
    eval_tuned's perplexity, minimized: a random model's math accuracy is 0 everywhere), the base eval is
    built once and reused, and summary.md ranks the trials best first."""
    result = run_main(["-m", "recipe=quickstart_search", *tiny_overrides(tiny_llama), "data.sft.limit=32",
                       "stages.eval_base.tasks=[perplexity]", "stages.eval_tuned.tasks=[perplexity]",
                       "stages.eval_base.limit=4", "stages.eval_tuned.limit=4",
                       "sweep.objective=eval_tuned.perplexity", "hydra.sweeper.direction=minimize",
                       "hydra.sweeper.n_trials=3"], tmp_path)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    sweep = tmp_path / "sweep"
    chains = {job: json.loads((sweep / str(job) / "chain.json").read_text()) for job in range(3)}
    objectives = {job: next(s["metrics"]["perplexity"] for s in c["stages"] if s["name"] == "eval_tuned")
                  for job, c in chains.items()}
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert best["best_value"] == pytest.approx(min(objectives.values()))  # what Optuna got is what the job measured
    assert [next(s["status"] for s in c["stages"] if s["name"] == "eval_base") for c in chains.values()] == \
        ["done", "reused", "reused"]
    rows = [line for line in (sweep / "summary.md").read_text().splitlines()[2:]]
    assert rows[0].startswith(f"| {min(objectives, key=objectives.get)} |") and len(rows) == 3
    assert "stages.sft.lora.r=" in rows[0] and (sweep / "objective.png").stat().st_size > 5000


def test_a_job_whose_loss_trails_the_earlier_ones_is_pruned_and_commits_nothing(tiny_llama, tmp_path):
    """Two jobs (Hydra's basic sweeper, in order): lr 1e-2 trains; lr 1e-7's loss stays where it started, worse
    than the first job's a few steps in, so Optuna's MedianPruner stops it there: chain.json says pruned, the
    stages after it never run, and only the first job's adapter is in the store."""
    result = run_main(["-m", *tiny_overrides(tiny_llama), "data.sft.limit=32", "stages.sft.max_steps=8",
                       "stages.sft.learning_rate=1e-2,1e-7", "stages.eval_base.tasks=[perplexity]",
                       "stages.eval_tuned.tasks=[perplexity]", "sweep.objective=eval_tuned.perplexity",
                       "sweep.prune.stage=sft", "sweep.prune.startup_trials=1", "sweep.prune.warmup_steps=1"],
                      tmp_path)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    first, second = (json.loads((tmp_path / "sweep" / job / "chain.json").read_text()) for job in ("0", "1"))
    assert first["status"] == "done" and second["status"] == "pruned"
    statuses = {s["name"]: s["status"] for s in second["stages"]}
    assert statuses["sft"] == "pruned" and statuses.get("eval_tuned") in (None, "pending")
    assert re.match(r"sft pruned at step [2-8]: loss \d+\.\d+ worse than the median of 1 earlier trials there$",
                    next(s for s in second["stages"] if s["name"] == "sft")["error"])
    assert len(list((tmp_path / "store" / "adapter").iterdir())) == 1
    last = (tmp_path / "sweep" / "summary.md").read_text().splitlines()[-1]  # ranked last: no objective
    assert last.startswith("| 1 |") and "| pruned |" in last
