"""Mid-stage resume (pipeline/training/checkpoints.py): a training stage (SFT, DPO) killed with SIGKILL
after a checkpoint is resumed by the next run of the same chain, from that step, and ends where an
uninterrupted run ends; the finished artifact holds no checkpoint."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import ROOT, run_main, tiny_overrides

STEPS = 40


def _overrides(model: Path) -> list[str]:
    kept = [o for o in tiny_overrides(model) if not o.startswith("stages.sft.max_steps")]
    return [*kept, f"stages.sft.max_steps={STEPS}", "stages.sft.checkpoint.every_steps=10",
            "stages.eval_base.tasks=[math]", "stages.eval_tuned.tasks=[math]",
            "stages.eval_base.limit=4", "stages.eval_tuned.limit=4"]


def _stage(run_dir: Path, name: str) -> dict:
    record = json.loads((run_dir / "chain.json").read_text())
    return next(s for s in record["stages"] if s["name"] == name)


def _kill_and_resume(overrides: list[str], tmp_path: Path, stage: str, steps: int) -> None:
    """Run once uninterrupted; run again, SIGKILL it once `stage` has its second checkpoint (step 20), run a
    third time: it resumes there, finishes at `steps`, and ends with the uninterrupted run's adapter."""
    (tmp_path / "reference").mkdir()
    reference = run_main(overrides, tmp_path / "reference")
    assert reference.returncode == 0, reference.stderr[-2000:]

    crashed = tmp_path / "crashed"
    crashed.mkdir()
    env = {**os.environ, "TUNECHAIN_STORE": str(crashed / "store"), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, str(ROOT / "main.py"), *overrides, f"hydra.run.dir={crashed / 'run'}"]
    chain = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd=crashed)
    deadline = time.time() + 300
    while not list((crashed / "store" / ".tmp").glob("*/trainer/checkpoint-20/trainer_state.json")):
        assert chain.poll() is None and time.time() < deadline, "the stage never reached its second checkpoint"
        time.sleep(0.05)
    os.kill(chain.pid, signal.SIGKILL)
    chain.wait()
    before = {p.parent.name for p in (crashed / "store").glob("adapter/*/artifact.json")}

    resumed = run_main(overrides, crashed)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    line = next(line for line in resumed.stdout.splitlines() if "resuming at step" in line)
    assert line.startswith(f"[{stage}] resuming at step ") and f" of {steps} " in line
    assert int(line.split()[4]) >= 20
    got, want = _stage(crashed / "run", stage), _stage(tmp_path / "reference" / "run", stage)
    assert got["metrics"]["train_steps"] == steps and got["fingerprint"] == want["fingerprint"]
    assert got["fingerprint"] not in before  # it was not finished when killed
    folder = Path(got["artifact"])
    assert not (folder / "trainer").exists() and not list(folder.rglob("checkpoint-*"))
    expected = load_file(Path(want["artifact"]) / "adapter_model.safetensors")
    trained = load_file(folder / "adapter_model.safetensors")
    assert all(torch.allclose(expected[k], trained[k], atol=1e-5) for k in expected)  # as without the crash
    assert not list((crashed / "store" / ".tmp").iterdir())  # the taken-over folder was committed


@pytest.mark.slow
def test_a_killed_sft_resumes_from_its_last_checkpoint(tiny_llama, tmp_path):
    _kill_and_resume(_overrides(tiny_llama), tmp_path, "sft", STEPS)


@pytest.mark.slow
def test_a_killed_dpo_resumes_from_its_last_checkpoint(tiny_llama, tmp_path):
    overrides = [f"model.path={tiny_llama}", "model.name=tiny", "logger=none", "hardware.num_threads=1",
                 "recipe=sft_dpo", "~stages.eval_sft", "~stages.eval_dpo", "data.sft.limit=32",
                 "stages.sft.max_steps=4", "stages.sft.per_device_train_batch_size=4", "stages.sft.learning_rate=1e-2",
                 "data.preference.limit=64", "stages.dpo.eval_dataset=null", "stages.dpo.max_steps=30",
                 "stages.dpo.per_device_train_batch_size=2", "stages.dpo.learning_rate=1e-3",
                 "stages.dpo.checkpoint.every_steps=10"]
    _kill_and_resume(overrides, tmp_path, "dpo", 30)


@pytest.mark.slow
def test_a_killed_streamed_sft_resumes_at_the_next_record(tiny_llama, tmp_path):
    """A streamed dataset (an IterableDataset read as training goes): the resumed trainer replays the stream
    past what it consumed, so it ends with the uninterrupted run's adapter, not one trained on repeated rows."""
    _kill_and_resume([*_overrides(tiny_llama), "+data.sft.streaming=true"], tmp_path, "sft", STEPS)
