"""Eval tasks as a registry: every task file is found, a task added from outside the eval stage runs
with it (reading another task's answers through `needs`), and unknown tasks fail at plan time."""
import pytest
from conftest import compose

from pipeline.errors import ConfigError
from pipeline.evaluation import registry


def test_every_shipped_task_is_registered_in_run_order():
    assert registry.names() == ("speed", "math", "reasoning", "instruct", "judge", "tools", "mcq", "vqa",
                                "hallucination", "code", "perplexity", "lm_eval")
    assert registry.default_budgets() == {"math": 256, "instruct": 256, "tools": 128, "vqa": 16, "hallucination": 4,
                                          "code": 512}
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


def test_a_users_task_with_its_own_settings_runs_in_a_chain(tmp_path, monkeypatch):
    """A task from the user's module with a settings dataclass: its defaults, an override in the same spelling
    as the shipped tasks' (once pipeline.engine.configstore.register() has seen it), its range checked at plan
    time, its percent metric known to the report, and the eval stage's child process types it too."""
    from pipeline.engine import configstore, report
    from pipeline.engine.plan import build_plan
    from pipeline.engine.runner import run_chain
    from pipeline.engine.store import Store

    (tmp_path / "my_settings_tasks.py").write_text(
        "from dataclasses import dataclass\n\n"
        "from pipeline.evaluation import registry\n"
        "from pipeline.ranges import at_least\n\n\n"
        "@dataclass\n"
        "class LongAnswerSettings:\n"
        "    min_chars: int = at_least(1, 10000)\n\n\n"
        "@registry.task('long_answers', order=91, headlines=('long_answer_share',), needs=('math',),\n"
        "               settings=LongAnswerSettings, percent=('long_answer_share',))\n"
        "def long_answers(ev):\n"
        "    settings = ev.cfg.settings.long_answers\n"
        "    answers = ev.shared['math']\n"
        "    return {'long_answer_share': sum(len(a.text) >= settings.min_chars for a in answers) / len(answers),\n"
        "            'long_answer_min_chars': settings.min_chars}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    __import__("my_settings_tasks")
    configstore.register()  # the Hydra defaults of every task's settings, this one's now included
    base = ["logger=none", "~stages.eval_base", "~stages.sft", "stages.eval_tuned.inputs=[base]",
            "stages.eval_tuned.tasks=[long_answers]", "stages.eval_tuned.limit=4", "stages.eval_tuned.compare_with=null",
            f"paths.store={tmp_path / 'store'}"]
    try:
        assert compose(base).stages.eval_tuned.settings.long_answers.min_chars == 10000  # from the dataclass
        with pytest.raises(ConfigError, match=r"^stages\.eval_tuned\.settings\.long_answers\.min_char: unknown key "
                                              r"\(did you mean 'min_chars'\?\); valid keys: min_chars$"):
            build_plan(compose(base + ["+stages.eval_tuned.settings.long_answers.min_char=1"]), Store(tmp_path),
                       device="cpu")
        with pytest.raises(ConfigError, match=r"^stages\.eval_tuned\.settings\.long_answers\.min_chars: 0; valid: >= 1$"):
            build_plan(compose(base + ["stages.eval_tuned.settings.long_answers.min_chars=0"]), Store(tmp_path),
                       device="cpu")
        assert "long_answer_share" in report.percent_metrics() and report.fmt("long_answer_share", 1.0) == "100.0%"
        cfg = compose(base + ["stages.eval_tuned.settings.long_answers.min_chars=1"])
        metrics = run_chain(cfg, tmp_path / "run", "quickstart", [], None)["stages"][0]["metrics"]
        assert metrics["math_n"] == 4 and metrics["long_answer_min_chars"] == 1  # the override reached the child
        assert 0 <= metrics["long_answer_share"] <= 1
    finally:
        registry._TASKS.pop("long_answers")
        configstore.register()
    assert "long_answers" not in compose(["logger=none"]).stages.eval_tuned.settings


def test_every_task_setting_is_typed_checked_and_fingerprinted_chosen_or_not(tmp_path):
    """The eval stage's config as its fingerprint sees it (plan._plain) holds every task's settings with their
    defaults; a setting of a task the stage does not run is still range-checked and still in the fingerprint."""
    from pipeline.engine.plan import _plain, build_plan
    from pipeline.engine.store import Store

    base = ["logger=none", "~stages.sft", "~stages.eval_tuned", "stages.eval_base.tasks=[math]"]

    def step(overrides):
        return build_plan(compose(base + overrides), Store(tmp_path), device="cpu").steps[0]

    default = step([])
    settings = _plain(default.cfg)["settings"]
    assert set(settings) == {n for n, s in registry.all_tasks().items() if s.settings}
    assert settings == {"speed": {"new_tokens": 64, "prompt_tokens": 512, "repeats": 3},
                        "tools": {"path": "embedded/data/test_tools.jsonl", "max_turns": 3},
                        "mcq": {"path": None, "style": "letter"}, "code": {"path": None, "prompt_style": "auto", "allow_code_execution": False,
                                 "sandbox": "namespaces", "timeout_s": 5.0},
                        "perplexity": {"max_length": 1024, "stride": 512},
                        "lm_eval": {"tasks": [], "num_fewshot": None}}
    changed = step(["stages.eval_base.settings.code.timeout_s=9"])
    assert _plain(changed.cfg)["settings"]["code"]["timeout_s"] == 9.0 and changed.fingerprint != default.fingerprint
    with pytest.raises(ConfigError, match=r"^stages\.eval_base\.settings\.code\.timeout_s: 0\.0; valid: > 0$"):
        step(["stages.eval_base.settings.code.timeout_s=0"])


def test_tasks_and_stages_declare_their_percent_metrics():
    from pipeline.engine import registry as stages
    from pipeline.engine import report

    pope = {f"{figure}{suffix}" for figure in ("hallucination_rate", "pope_accuracy", "pope_precision", "pope_recall",
                                               "pope_f1", "pope_yes_ratio")
            for suffix in ("", "_random", "_popular", "_adversarial")}
    assert registry.percent_metrics() == {"math_accuracy", "stopped_at_eos", "instruct_pass_rate", "tools_call_match",
                                          "tools_answer_accuracy", "mcq_accuracy", "code_pass@1", "code_ran",
                                          "reasoning_has_think",
                                          "vqa_accuracy", "vqa_stopped_at_eos"} | pope
    parity = ("parity_identical", "parity_token_agreement", "parity_image_identical", "parity_image_token_agreement",
              "parity_same_top")
    assert stages.get("gguf").percent == parity and stages.get("sft").percent == ()
    assert report.percent_metrics() == registry.percent_metrics() | set(parity)
    assert report.fmt("mcq_accuracy", 0.25) == "25.0%" and report.fmt("parity_identical", 1) == "100.0%"
    assert report.fmt("perplexity", 3.5) == "3.5"
