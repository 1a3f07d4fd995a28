"""The ship gate (pipeline/stages/select.py): plan-time rules, the decision on the paired bootstrap interval,
and (acceptance) recipe=ship on the embedded model picking a GGUF and serving it."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import compose, run_main

from pipeline.artifact import Artifact
from pipeline.engine.plan import build_plan
from pipeline.engine.store import Store
from pipeline.errors import ConfigError
from pipeline.stages.select import SelectConfig, _verdict


def _plan(tmp_path, *overrides):
    return build_plan(compose(["recipe=ship", "logger=none", *overrides]), Store(tmp_path / "store"),
                      recipe="ship", device="cpu")


def test_the_gate_takes_every_variant_compared_with_the_reference_and_hands_on_a_gguf(tmp_path):
    plan = _plan(tmp_path)
    select = next(s for s in plan.steps if s.name == "select")
    evals = ["eval_reference", "eval_int8", "eval_nf4", "eval_w4a16", "eval_gguf_q8_0", "eval_gguf_q4_k_m"]
    if "eval_w4a16" not in [s.name for s in plan.steps]:  # llm-compressor not installed: skipped, optional
        evals.remove("eval_w4a16")
    assert select.input_names == evals and select.output_kind == "gguf"  # gptq skipped here: the gate goes on
    assert next(s for s in plan.steps if s.name == "serve").input_names == ["select"]


@pytest.mark.parametrize("overrides, message", [
    (["stages.select.reference=merge"], r"^stages\.select\.reference: 'merge' is not an earlier eval stage; "
                                         r"earlier evals: eval_reference, eval_int8"),
    (["stages.select.candidates=[eval_reference]"], r"^stages\.select\.candidates: eval_reference evaluates "
                                                     r"'merge', which is not an export"),
    (["stages.select.hand_on=null"], r"^stages\.select\.hand_on: the candidates make gguf, model; say which kind"),
    (["stages.select.metric=perplexity"], r"^stages\.select\.metric: 'perplexity'; valid: math_accuracy, "
                                          r"vqa_accuracy"),
    (["stages.eval_nf4.tasks=[perplexity]"], r"^stages\.select\.metric: math_accuracy comes from task 'math', "
                                               r"which eval_nf4 do\(es\) not run; add math to their tasks$"),
    (["stages.select.min_retained=1.5"], r"^stages\.select\.min_retained: 1\.5; valid: \(0, 1\]$"),
])
def test_a_gate_that_cannot_judge_is_refused_at_plan_time(overrides, message, tmp_path):
    with pytest.raises(ConfigError, match=message):
        _plan(tmp_path, *overrides)


def _eval(folder: Path, stage: str, right: list[bool], size_mb: float) -> Artifact:
    """An eval's record as the eval stage writes it: its figure, its size and one line per item."""
    folder.mkdir(parents=True)
    (folder / "predictions.jsonl").write_text("".join(
        json.dumps({"question": f"q{i}", "correct": ok}) + "\n" for i, ok in enumerate(right)))
    return Artifact(kind="eval", path=str(folder), fingerprint=stage, stage=stage,
                    metrics={"math_accuracy": sum(right) / len(right), "size_mb": size_mb})


def test_the_decision_reads_the_intervals_lower_end_not_the_point(tmp_path):
    cfg = SelectConfig(reference="eval_reference", min_retained=0.98)
    reference = _eval(tmp_path / "ref", "eval_reference", [True] * 150 + [False] * 50, 16.0)
    same = _eval(tmp_path / "q8", "eval_q8", [True] * 150 + [False] * 50, 4.3)
    # 4 of 150 right answers lost and 4 wrong ones now right: the point estimate is 100%, the interval is not
    swapped = _eval(tmp_path / "q4", "eval_q4", [False] * 4 + [True] * 146 + [True] * 4 + [False] * 46, 2.6)
    worse = _eval(tmp_path / "q2", "eval_q2", [True] * 120 + [False] * 80, 1.9)
    gguf = lambda stage: Artifact(kind="gguf", path="", fingerprint="", stage=stage)  # noqa: E731
    verdicts = {v["export"]: v for v in (_verdict(e.stage, e, gguf(e.stage[5:]), reference, cfg, "predictions.jsonl")
                                         for e in (same, swapped, worse))}
    assert verdicts["q8"]["passed"] and verdicts["q8"]["interval"] == [1.0, 1.0]
    assert verdicts["q4"]["retained"] == 1.0 and not verdicts["q4"]["passed"]
    assert verdicts["q4"]["interval"][0] < 0.98 and "lower end below 98%" in verdicts["q4"]["why"]
    assert not verdicts["q2"]["passed"] and verdicts["q2"]["why"].startswith("retained 80.0% [")
    cfg.hand_on = "model"
    assert _verdict("eval_q8", same, gguf("q8"), reference, cfg, "predictions.jsonl")["why"] == \
        "retained 100.0% [100.0%, 100.0%]; a gguf, not a model (hand_on)"


@pytest.mark.acceptance
def test_ship_picks_the_smallest_variant_that_keeps_its_accuracy_and_serves_it(tmp_path):
    result = run_main(["recipe=ship", "logger=none"], tmp_path, timeout=3000)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    record = json.loads((tmp_path / "run" / "chain.json").read_text())
    stages = {s["name"]: s for s in record["stages"]}
    chosen = stages["select"]["metrics"]["selected"]
    assert chosen.startswith("gguf_") and stages["serve"]["status"] == "done"
    report = (tmp_path / "run" / "report.md").read_text()
    assert "## Ship gate" in report and f"select: {chosen} handed on" in report
    for loser in ("int8", "nf4", "w4a16", "gguf_q8_0", "gguf_q4_k_m"):
        assert loser == chosen or loser not in stages or f"select: {loser}: " in report  # each loser's reason


def test_the_winners_files_are_hard_linked_without_its_manifest(tmp_path):
    from pipeline.stages.select import _link_files

    source, target = tmp_path / "gguf", tmp_path / "select"
    (source / "sub").mkdir(parents=True)
    (source / "model.gguf").write_bytes(b"GGUF" * 10)
    (source / "sub" / "artifact.json").write_text("{}")  # only the top-level manifest stays behind
    (source / "artifact.json").write_text("{}")
    target.mkdir()
    _link_files(source, target)
    assert sorted(str(p.relative_to(target)) for p in target.rglob("*")) == ["model.gguf", "sub", "sub/artifact.json"]
    assert (target / "model.gguf").stat().st_ino == (source / "model.gguf").stat().st_ino
