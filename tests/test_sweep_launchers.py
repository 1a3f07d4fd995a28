"""Sweeps through Hydra launchers: submitit's local executor runs a 2-job sweep as separate processes
sharing one store (the common prefix built once: the second job waits on the store lock and reuses
it), and `hydra/launcher=submitit_slurm +dry_run=true` prints the sbatch settings and submits nothing."""
import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT, tiny_overrides

pytest.importorskip("hydra_plugins.hydra_submitit_launcher")


@pytest.mark.slow
def test_submitit_local_runs_a_two_job_sweep_sharing_the_store(tiny_llama, tmp_path):
    env = {**os.environ, "TUNECHAIN_STORE": str(tmp_path / "store"), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, str(ROOT / "main.py"), "-m", "hydra/launcher=submitit_local", *tiny_overrides(tiny_llama),
               "stages.eval_base.tasks=[math]", "stages.eval_tuned.tasks=[math]", "stages.sft.learning_rate=1e-3,2e-3",
               f"hydra.sweep.dir={tmp_path / 'sweep'}"]
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "sweep summary" in result.stdout and "(2 jobs)" in result.stdout
    logs = [path.read_text() for path in (tmp_path / "sweep" / ".submitit").glob("*/*_log.out")]  # each job's stdout
    assert len(logs) == 2
    outcomes = sorted(next(line for line in log.splitlines() if "stage eval_base:" in line).split()[3] for log in logs)
    assert outcomes == ["done", "reused"]  # one built the shared base eval, the other reused it
    assert len(list((tmp_path / "store" / "adapter").iterdir())) == 2  # one adapter per learning rate


def test_slurm_dry_run_prints_the_sbatch_settings_and_submits_nothing(tmp_path):
    command = [sys.executable, str(ROOT / "main.py"), "-m", "hydra/launcher=submitit_slurm", "+dry_run=true",
               "hydra.launcher.partition=gpu", "hydra.launcher.gpus_per_node=8", "logger=none"]
    result = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "nothing submitted" in result.stdout and "partition: gpu" in result.stdout
    assert "gpus_per_node: 8" in result.stdout and not (tmp_path / "multirun").exists()


@pytest.mark.slow
def test_ray_launcher_runs_a_two_job_sweep_sharing_the_store(tiny_llama, tmp_path):
    pytest.importorskip("hydra_plugins.hydra_ray_launcher")
    env = {**os.environ, "TUNECHAIN_STORE": str(tmp_path / "store"), "OMP_NUM_THREADS": "1",
           "RAY_USAGE_STATS_ENABLED": "0"}
    command = [sys.executable, str(ROOT / "main.py"), "-m", "hydra/launcher=ray", *tiny_overrides(tiny_llama),
               "stages.eval_base.tasks=[math]", "stages.eval_tuned.tasks=[math]", "stages.sft.learning_rate=1e-3,2e-3",
               "+hydra.launcher.ray.init.num_cpus=2", "+hydra.launcher.ray.init.include_dashboard=false",
               f"hydra.sweep.dir={tmp_path / 'sweep'}"]
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "sweep summary" in result.stdout and "(2 jobs)" in result.stdout
    chains = [json.loads((tmp_path / "sweep" / str(job) / "chain.json").read_text()) for job in (0, 1)]
    outcomes = sorted(next(s["status"] for s in chain["stages"] if s["name"] == "eval_base") for chain in chains)
    assert outcomes == ["done", "reused"]  # one Ray worker built the shared base eval, the other reused it
    assert len(list((tmp_path / "store" / "adapter").iterdir())) == 2
