"""Training-health warnings (seed 001's alarming values), on log rows and on a real trainer."""
from pathlib import Path

from conftest import compose, tiny_overrides

from pipeline.engine.runner import run_chain
from pipeline.training.health import PATIENCE, HealthMonitor


def _monitor(**kwargs) -> HealthMonitor:
    defaults = dict(max_steps=100, max_grad_norm=1.0, lr_scheduler_type="cosine", warmup_steps=0.0, report=lambda m: None)
    return HealthMonitor(**{**defaults, **kwargs})


def test_healthy_logs_raise_nothing():
    monitor = _monitor()
    for step in range(1, 101, 10):
        monitor.observe(step, {"loss": 2.0 - step / 100, "grad_norm": 0.6, "learning_rate": 1e-3 * (1 - step / 100),
                               "num_tokens": 500 * step, "entropy": 1.5, "mean_token_accuracy": 0.5})
    assert monitor.finish(100) == []


def test_each_alarm_fires_once_with_its_step():
    monitor = _monitor(max_steps=20)
    for step in range(1, 20):
        monitor.observe(step, {"grad_norm": 25.0, "learning_rate": 1e-3, "num_tokens": 40 * step,
                               "entropy": 0.01, "mean_token_accuracy": 0.999})
    warnings = monitor.finish(19)
    text = "\n".join(warnings)
    assert len(warnings) == 6
    settled = 4  # grad_norm rules skip the first 20% of steps (steps 1-4 of 20)
    assert f"step {settled + PATIENCE}: grad_norm has been at or above max_grad_norm=1.0" in text
    assert f"step {settled + PATIENCE}: grad_norm above 10" in text
    assert "step 2: only 40 tokens per step" in text
    assert "step 1: entropy 0.010 this early" in text and "step 1: token accuracy 99.9% this early" in text
    assert "the learning rate stayed at 0.001 although a schedule was asked for" in text


def test_short_streaks_early_clipping_and_late_values_are_not_alarms():
    monitor = _monitor()
    for step in range(1, 21):  # the fast-falling first 20%: clipped every time, as quickstart is
        monitor.observe(step, {"grad_norm": 3.0})
    for step, norm in enumerate([0.05] * (PATIENCE - 1) + [0.5] + [0.05] * (PATIENCE - 1), start=21):
        monitor.observe(step, {"grad_norm": norm})
    monitor.observe(90, {"entropy": 0.0, "mean_token_accuracy": 1.0})  # late: a converged model may do this
    assert monitor.finish(90) == []


def test_constant_schedule_may_stay_flat():
    monitor = _monitor(lr_scheduler_type="constant")
    for step in range(1, 6):
        monitor.observe(step, {"learning_rate": 1e-4})
    assert monitor.finish(5) == []


def test_real_trainer_with_a_tiny_clip_is_flagged_in_the_stage_metrics(tiny_llama, tmp_path):
    overrides = tiny_overrides(tiny_llama) + ["data.sft.limit=64", "stages.sft.max_steps=8", "stages.sft.max_grad_norm=1e-6",
                                               "~stages.eval_base", "~stages.eval_tuned"]
    record = run_chain(compose(overrides + [f"paths.store={tmp_path / 'store'}"]), tmp_path / "run", "quickstart", [], None)
    warnings = record["stages"][0]["metrics"]["health_warnings"]
    assert any("at or above max_grad_norm=1e-06" in w for w in warnings), warnings
    assert "health_warnings" not in str(record["stages"][0]["metrics"].get("loss_first"))
    assert "Training health" in (Path(tmp_path / "run") / "report.md").read_text()
