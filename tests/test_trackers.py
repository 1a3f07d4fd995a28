"""Trackers besides W&B (pipeline/trackers): TensorBoard, MLflow and Trackio, all three at once on one
chain, each read back with its own library's reader and compared with metrics.jsonl; a bad name fails
before any stage."""
import json
import os
import subprocess
import sys

import pytest
from conftest import compose, run_main, tiny_overrides

from pipeline.engine.plan import build_plan
from pipeline.engine.runner import run_chain
from pipeline.engine.store import Store
from pipeline.errors import ConfigError


def _rows(run_dir, stage, key):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r[key]) for r in rows if r["stage"] == stage and key in r]


def test_tensorboard_mlflow_and_trackio_get_the_same_rows(tiny_llama, tmp_path, monkeypatch):
    overrides = [o for o in tiny_overrides(tiny_llama) if o != "logger=none"]
    args = [*overrides, "logger=tensorboard", "logger.backends=[tensorboard,mlflow,trackio]", "data.sft.limit=32",
            "stages.eval_base.limit=4", "stages.eval_tuned.limit=4"]
    done = run_main(args, tmp_path, env={"TRACKIO_DIR": str(tmp_path / "trackio"), "MLFLOW_TRACKING_URI": ""})
    assert done.returncode == 0, done.stderr[-3000:]
    run_dir = tmp_path / "run"
    losses = _rows(run_dir, "sft", "loss")
    assert len(losses) == 4  # logging_steps 1, 4 steps
    accuracy = json.loads((run_dir / "chain.json").read_text())["stages"][2]["metrics"]["math_accuracy"]
    assert "TensorBoard: tensorboard --logdir" in done.stdout and "MLflow:" in done.stdout and "Trackio:" in done.stdout

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0, "tensors": 0}).Reload()
    assert [(e.step, round(e.value, 4)) for e in events.Scalars("sft/loss")] == [(s, round(v, 4)) for s, v in losses]
    assert events.Scalars("summary/eval_tuned/math_accuracy")[0].value == pytest.approx(accuracy)
    texts = events.Tags()["tensors"]
    assert "config/text_summary" in texts and "report/text_summary" in texts

    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 reads its file store only when told to

    client = MlflowClient(tracking_uri=(run_dir / "mlruns").resolve().as_uri())
    (run,) = client.search_runs([client.get_experiment_by_name("tunechain").experiment_id])
    history = client.get_metric_history(run.info.run_id, "sft/loss")
    assert [(m.step, round(m.value, 4)) for m in history] == [(s, round(v, 4)) for s, v in losses]
    assert run.data.metrics["summary/eval_tuned/math_accuracy"] == pytest.approx(accuracy)
    assert run.data.params["stages.sft.max_steps"] == "4" and run.info.status == "FINISHED"
    assert {f.path for f in client.list_artifacts(run.info.run_id, "report")} >= {"report/report.md", "report/report.html"}

    read = subprocess.run(  # trackio reads TRACKIO_DIR when imported: its reader runs in its own process
        [sys.executable, "-c", "import json, trackio; S = trackio.SQLiteStorage; print(json.dumps(S.get_run_config("
                               "'tunechain', 'quickstart-run'))); print(json.dumps(S.get_logs('tunechain', 'quickstart-run')))"],
        capture_output=True, text=True, env={**os.environ, "TRACKIO_DIR": str(tmp_path / "trackio")})
    assert read.returncode == 0, read.stderr[-2000:]
    config, logs = (json.loads(line) for line in read.stdout.strip().splitlines()[-2:])
    assert config["stages"]["sft"]["max_steps"] == 4  # the run's (redacted) config
    assert [(r["sft/step"], round(r["sft/loss"], 4)) for r in logs if "sft/loss" in r] == \
        [(s, round(v, 4)) for s, v in losses]
    assert [r["summary/eval_tuned/math_accuracy"] for r in logs if "summary/eval_tuned/math_accuracy" in r] == \
        [pytest.approx(accuracy)]


def test_an_unknown_tracker_is_named_before_any_stage(tiny_llama, tmp_path):
    """At plan time, so a dry run says it too."""
    overrides = [*tiny_overrides(tiny_llama), "logger.backends=[wandb,neptune]", f"paths.store={tmp_path / 'store'}"]
    message = r"^logger\.backends: unknown \['neptune'\]; valid: wandb, tensorboard, mlflow, trackio \(or \[\] for none\)$"
    with pytest.raises(ConfigError, match=message):
        build_plan(compose(overrides), Store(tmp_path / "store"), recipe="quickstart", device="cpu")
    with pytest.raises(ConfigError, match=message):
        run_chain(compose(overrides), tmp_path / "run", "quickstart", overrides, None)
    assert not (tmp_path / "run" / "chain.json").exists() and not list((tmp_path / "store").glob("adapter/*"))
