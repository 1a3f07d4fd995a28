"""SIGTERM / Ctrl-C (pipeline/stopping.py): a chain stopped during SFT saves a checkpoint at once, records
itself and the stage as interrupted in chain.json, exits 128 + the signal, and the next run of the same
command resumes from that checkpoint."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT, read_chain, run_main, tiny_overrides
from pipeline import stopping

STEPS = 200  # far more than run before the signal lands: the stop, not the end, must save the checkpoint


def _overrides(model: Path) -> list[str]:
    kept = [o for o in tiny_overrides(model) if not o.startswith(("stages.sft.max_steps", "stages.eval"))]
    return [*kept, f"stages.sft.max_steps={STEPS}", "stages.sft.checkpoint.every_steps=null",
            "stages.sft.checkpoint.every_minutes=null", "~stages.eval_base", "~stages.eval_tuned"]


def test_a_signal_outside_training_stops_at_once_with_the_shells_exit_code():
    before = signal.getsignal(signal.SIGINT)  # Python's default, or SIG_IGN under nohup / a background job
    with pytest.raises(stopping.Interrupted) as stopped:
        with stopping.handled(grace_s=5):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)  # interrupted before this ends
    assert stopped.value.exit_code == 130 and not stopped.value.saved
    assert signal.getsignal(signal.SIGINT) is before  # restored after the block


def test_a_trainer_gets_the_grace_to_save_then_the_stop_is_forced():
    with stopping.handled(grace_s=0.3):
        with stopping.listening():
            os.kill(os.getpid(), signal.SIGTERM)
            assert stopping.requested() == signal.SIGTERM  # left to the trainer: nothing raised yet
            started = time.monotonic()
            with pytest.raises(stopping.Interrupted) as stopped:
                time.sleep(5)  # a step that outlasts the grace
            assert 0.2 < time.monotonic() - started < 2 and stopped.value.exit_code == 143


def test_stop_grace_s_must_be_positive():
    assert stopping.grace_problems(25) == [] and stopping.grace_problems(0) == ["stop_grace_s: 0; valid: > 0"]
    assert stopping.grace_problems(None)


def _sft_steps_logged(run_dir: Path) -> list[int]:
    metrics = run_dir / "metrics.jsonl"
    rows = [json.loads(line) for line in metrics.read_text().splitlines()] if metrics.is_file() else []
    return [row["step"] for row in rows if row["stage"] == "sft" and "loss" in row]


@pytest.mark.slow
@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143)])
def test_a_terminated_sft_saves_records_interrupted_and_resumes(tiny_llama, tmp_path, signum, code):
    overrides = _overrides(tiny_llama)
    env = {**os.environ, "TUNECHAIN_STORE": str(tmp_path / "store"), "OMP_NUM_THREADS": "1"}
    chain = subprocess.Popen([sys.executable, str(ROOT / "main.py"), *overrides, f"hydra.run.dir={tmp_path / 'run'}"],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=tmp_path)
    deadline = time.time() + 300
    while not _sft_steps_logged(tmp_path / "run"):
        assert chain.poll() is None and time.time() < deadline, "the stage never logged a step"
        time.sleep(0.05)
    os.kill(chain.pid, signum)
    output = chain.communicate(timeout=120)[0]
    assert chain.returncode == code, output[-3000:]

    record = read_chain(tmp_path / "run")
    sft = next(s for s in record["stages"] if s["name"] == "sft")
    assert record["status"] == "interrupted" and record["interrupted_stage"] == "sft"
    assert sft["status"] == "interrupted" and sft["signal"] == signal.Signals(signum).name
    checkpoint = Path(sft["checkpoint"])
    assert (checkpoint / "trainer_state.json").is_file() and checkpoint.parent.parent.parent.name == ".tmp"
    saved_at = int(checkpoint.name.split("-")[1])
    assert 1 <= saved_at < STEPS and "run the same command again to resume" in sft["error"]
    assert not list((tmp_path / "store").glob("adapter/*"))  # nothing half-trained was committed

    resumed = run_main(overrides, tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"[sft] resuming at step {saved_at} of {STEPS}" in resumed.stdout
    again = next(s for s in read_chain(tmp_path / "run")["stages"] if s["name"] == "sft")
    assert again["status"] == "done" and again["metrics"]["train_steps"] == STEPS
    assert not list((tmp_path / "store" / ".tmp").iterdir())  # the interrupted folder was taken over and committed
