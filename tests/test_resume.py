"""Mid-stage resume (pipeline/training/checkpoints.py): a training stage killed with SIGKILL after a
checkpoint is resumed by the next run of the same chain, from that step, and ends where an
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


def _sft(run_dir: Path) -> dict:
    record = json.loads((run_dir / "chain.json").read_text())
    return next(s for s in record["stages"] if s["name"] == "sft")


@pytest.mark.slow
def test_a_killed_sft_resumes_from_its_last_checkpoint(tiny_llama, tmp_path):
    (tmp_path / "reference").mkdir()
    reference = run_main(_overrides(tiny_llama), tmp_path / "reference")
    assert reference.returncode == 0, reference.stderr[-2000:]

    crashed = tmp_path / "crashed"
    crashed.mkdir()
    env = {**os.environ, "TUNECHAIN_STORE": str(crashed / "store"), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, str(ROOT / "main.py"), *_overrides(tiny_llama), f"hydra.run.dir={crashed / 'run'}"]
    chain = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd=crashed)
    deadline = time.time() + 300
    while not list((crashed / "store" / ".tmp").glob("*/trainer/checkpoint-20/trainer_state.json")):
        assert chain.poll() is None and time.time() < deadline, "the stage never reached its second checkpoint"
        time.sleep(0.05)
    os.kill(chain.pid, signal.SIGKILL)
    chain.wait()
    assert not list((crashed / "store").glob("adapter/*/artifact.json"))  # nothing finished

    resumed = run_main(_overrides(tiny_llama), crashed)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    line = next(line for line in resumed.stdout.splitlines() if "resuming at step" in line)
    assert line.startswith("[sft] resuming at step ") and f" of {STEPS} " in line
    assert int(line.split()[4]) >= 20
    sft = _sft(crashed / "run")
    assert sft["metrics"]["train_steps"] == STEPS and sft["fingerprint"] == _sft(tmp_path / "reference" / "run")["fingerprint"]
    folder = Path(sft["artifact"])
    assert not (folder / "trainer").exists() and not list(folder.rglob("checkpoint-*"))
    want = load_file(Path(_sft(tmp_path / "reference" / "run")["artifact"]) / "adapter_model.safetensors")
    got = load_file(folder / "adapter_model.safetensors")
    assert all(torch.allclose(want[k], got[k], atol=1e-5) for k in want)  # the same adapter as without the crash
    assert not list((crashed / "store" / ".tmp").iterdir())  # the taken-over folder was committed
