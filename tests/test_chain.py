"""The runner on tiny random Llama and Qwen3 models: sft and eval stages, chain.json, reuse,
resume after kill -9, W&B offline files, and the sweep summary."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

from conftest import ROOT, compose, read_chain, run_main, tiny_overrides

from pipeline.engine.runner import run_chain


def _run(overrides, tmp_path, run="run"):
    cfg = compose(overrides + [f"paths.store={tmp_path / 'store'}"])
    return run_chain(cfg, tmp_path / run, "quickstart", overrides, None)


def test_quickstart_chain_on_tiny_models(tiny_model, tmp_path):
    record = _run(tiny_overrides(tiny_model) + ["data.sft.limit=64"], tmp_path)
    stages = {s["name"]: s for s in record["stages"]}
    assert [s["status"] for s in record["stages"]] == ["done", "done", "done"]
    assert record["status"] == "done"
    sft = stages["sft"]
    assert sft["metrics"]["train_steps"] == 4
    adapter = Path(sft["artifact"])
    assert (adapter / "adapter_config.json").is_file() and (adapter / "artifact.json").is_file()
    assert json.loads((adapter / "artifact.json").read_text())["kind"] == "adapter"
    for name in ("eval_base", "eval_tuned"):
        metrics = stages[name]["metrics"]
        assert metrics["math_n"] == 8 and 0 <= metrics["math_accuracy"] <= 1 and metrics["perplexity"] > 1
        assert len((Path(stages[name]["artifact"]) / "predictions.jsonl").read_text().splitlines()) == 8
    on_disk = read_chain(tmp_path / "run")
    assert on_disk["stages"][1]["fingerprint"] == sft["fingerprint"]
    assert "eval_tuned vs eval_base: math_accuracy" in (tmp_path / "run" / "report.md").read_text()

    again = _run(tiny_overrides(tiny_model) + ["data.sft.limit=64"], tmp_path, run="run2")
    assert [s["status"] for s in again["stages"]] == ["reused"] * 3
    assert [s["fingerprint"] for s in again["stages"]] == [s["fingerprint"] for s in record["stages"]]


def test_full_sft_lowers_the_loss(tiny_llama, tmp_path):
    overrides = tiny_overrides(tiny_llama) + ["stages.sft.method=full", "stages.sft.max_steps=30",
                                               "stages.sft.learning_rate=3e-3", "data.sft.limit=120",
                                               "~stages.eval_base", "stages.eval_tuned.compare_with=null"]
    record = _run(overrides, tmp_path)
    sft = record["stages"][0]
    assert sft["metrics"]["loss_last"] < 0.8 * sft["metrics"]["loss_first"]
    assert json.loads((Path(sft["artifact"]) / "artifact.json").read_text())["kind"] == "model"
    assert (Path(sft["artifact"]) / "model.safetensors").is_file()


def test_changing_a_stage_reruns_it_and_what_follows_only(tiny_llama, tmp_path):
    _run(tiny_overrides(tiny_llama) + ["data.sft.limit=32"], tmp_path)
    changed = _run(tiny_overrides(tiny_llama) + ["data.sft.limit=32", "stages.sft.learning_rate=1e-3"], tmp_path, "r2")
    assert [s["status"] for s in changed["stages"]] == ["reused", "done", "done"]


def test_wandb_offline_writes_run_files_and_local_metrics(tiny_llama, tmp_path):
    overrides = [o for o in tiny_overrides(tiny_llama) if o != "logger=none"] + ["data.sft.limit=32", "logger.mode=offline"]
    _run(overrides, tmp_path)
    run_dir = tmp_path / "run"
    runs = list((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(runs) == 1 and runs[0].stat().st_size > 0
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert {r["stage"] for r in rows} == {"eval_base", "sft", "eval_tuned"}
    assert any("loss" in r for r in rows if r["stage"] == "sft")


def test_kill_during_eval_then_rerun_resumes(tiny_llama, tmp_path):
    """kill -9 while the last eval runs: the re-run reuses SFT and finishes eval."""
    args = tiny_overrides(tiny_llama) + ["data.sft.limit=32", "stages.eval_tuned.limit=null",
                                          "stages.eval_tuned.max_new_tokens.math=64", "stages.eval_tuned.batch_size=2"]
    env = {**os.environ, "TUNECHAIN_STORE": str(tmp_path / "store"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, str(ROOT / "main.py"), *args, f"hydra.run.dir={tmp_path / 'run'}"],
                            cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline:
        chain = tmp_path / "run" / "chain.json"
        if chain.exists() and read_chain(tmp_path / "run")["stages"][2]["status"] == "running":
            break
        assert proc.poll() is None, "the run ended before its last eval started"
        time.sleep(0.2)
    time.sleep(1.0)
    stage_processes = psutil.Process(proc.pid).children(recursive=True)
    assert stage_processes, "eval_tuned runs in its own process"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    _, alive = psutil.wait_procs(stage_processes, timeout=3)
    assert not alive, f"the stage's process outlived the killed runner: {alive}"
    killed = read_chain(tmp_path / "run")
    assert [s["status"] for s in killed["stages"]] == ["done", "done", "running"]
    assert not (tmp_path / "store" / "eval" / killed["stages"][2]["fingerprint"]).exists()

    result = run_main(args, tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    again = read_chain(tmp_path / "run")
    assert [s["status"] for s in again["stages"]] == ["reused", "reused", "done"]
    assert not list((tmp_path / "store" / ".tmp").iterdir())


def test_sweep_runs_two_jobs_and_prints_one_summary(tiny_llama, tmp_path):
    args = ["-m"] + tiny_overrides(tiny_llama) + ["data.sft.limit=32", "stages.sft.learning_rate=1e-4,3e-4"]
    result = run_main(args, tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "== sweep summary" in result.stdout
    summary = (tmp_path / "sweep" / "summary.md").read_text().splitlines()
    assert len(summary) == 4  # header, rule, two jobs
    assert "stages.sft.learning_rate=0.0001" in summary[2] or "learning_rate=1e-4" in summary[2]
    job0, job1 = (read_chain(tmp_path / "sweep" / str(i)) for i in (0, 1))
    assert job0["stages"][0]["status"] == "done" and job1["stages"][0]["status"] == "reused"  # eval_base shared
    assert job0["stages"][1]["fingerprint"] != job1["stages"][1]["fingerprint"]
