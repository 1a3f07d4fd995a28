"""Training stages on several processes through torchrun (pipeline/engine/launch.py): the launch command
per hardware profile, plan-time refusals, a real 2-process CPU (gloo) SFT through the runner, and a
rank killed with SIGKILL failing the stage without leaving a finished-looking artifact."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT, compose, tiny_overrides
from pipeline.engine import launch
from pipeline.errors import ConfigError, PlanError

DDP_CPU = ["hardware=ddp", "hardware.num_processes=2", "hardware.device=cpu"]


def test_launch_command_per_profile():
    single = launch.launch_command({"num_processes": 4}, "job.json")
    assert single[1:] == ["-m", "torch.distributed.run", "--nproc-per-node=4", "--standalone",
                          "-m", "pipeline.engine.worker", "job.json"]
    nodes = launch.launch_command({"num_processes": 8, "num_nodes": 2, "rdzv_endpoint": "node0:29400"}, "j")
    assert "--nnodes=2" in nodes and "--rdzv-backend=c10d" in nodes and "--rdzv-endpoint=node0:29400" in nodes
    assert "--standalone" not in nodes
    assert launch.is_distributed("sft", {"num_processes": 2}) and launch.is_distributed("dpo", {"num_nodes": 2})
    assert not launch.is_distributed("eval", {"num_processes": 2}) and not launch.is_distributed("sft", {})


@pytest.mark.parametrize("hardware, error, message", [
    ({"num_processes": 2, "num_nodes": 2}, ConfigError, r"hardware\.rdzv_endpoint: num_nodes is 2"),
    ({"num_processes": 0}, ConfigError, r"must be >= 1"),
    ({"num_processes": 2, "deepspeed": {"zero_optimization": {"stage": 2}}}, PlanError, r"hardware\.deepspeed: "),
])
def test_bad_profiles_fail_at_plan_time(hardware, error, message):
    # DeepSpeed: "not installed" here; where it is installed, the CPU refusal (both name the key)
    with pytest.raises(error, match=message):
        launch.check(hardware, "cpu")


def test_plan_shows_the_launch_command(tmp_path):
    from pipeline.engine.plan import build_plan
    from pipeline.engine.store import Store

    plan = build_plan(compose(["logger=none", *DDP_CPU]), Store(tmp_path), recipe="quickstart")
    assert list(plan.launches) == ["sft"]
    assert plan.launches["sft"].startswith("torchrun --nproc-per-node=2 --standalone -m pipeline.engine.worker")
    assert "launch  sft: torchrun --nproc-per-node=2" in plan.render()
    single = build_plan(compose(["logger=none"]), Store(tmp_path), recipe="quickstart")
    fingerprints = [{s.name: s.fingerprint for s in p.steps} for p in (plan, single)]
    assert fingerprints[0]["sft"] != fingerprints[1]["sft"]            # twice the global batch: another adapter
    assert fingerprints[0]["eval_base"] == fingerprints[1]["eval_base"]  # one process either way


@pytest.mark.slow
def test_two_process_sft_on_cpu_through_the_runner(tiny_llama, tmp_path):
    from pipeline.artifact import Artifact
    from pipeline.engine.runner import run_chain

    cfg = compose([*tiny_overrides(tiny_llama), *DDP_CPU, "hardware.num_threads=1", "stages.sft.logging_steps=1",
                   "stages.eval_base.tasks=[math]", "stages.eval_tuned.tasks=[math]",
                   "stages.eval_base.limit=4", "stages.eval_tuned.limit=4", f"paths.store={tmp_path / 'store'}"])
    record = run_chain(cfg, tmp_path / "run", "quickstart", [], None)
    sft = next(s for s in record["stages"] if s["name"] == "sft")
    assert record["status"] == "done" and sft["metrics"]["world_size"] == 2 and sft["metrics"]["train_steps"] == 4
    adapter = Artifact.read(Path(sft["artifact"]))
    assert "torch.distributed.run --nproc-per-node=2" in adapter.meta["launch"]
    assert (Path(adapter.path) / "adapter_model.safetensors").is_file()
    assert not {"job.json", "result.json", ".worker"} & set(os.listdir(adapter.path))
    logged = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert sum(1 for row in logged if row["stage"] == "sft" and "loss" in row) == 4  # rank 0's rows, replayed


def _worker_ranks() -> dict[int, int]:
    """rank -> pid of this machine's tunechain workers (read from their environment)."""
    import psutil

    found = {}
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if "pipeline.engine.worker" in " ".join(proc.info["cmdline"] or []):
                found[int(proc.environ().get("RANK", "-1"))] = proc.pid
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


@pytest.mark.slow
def test_a_killed_rank_fails_the_stage_and_leaves_no_artifact(tiny_llama, tmp_path):
    env = {**os.environ, "TUNECHAIN_STORE": str(tmp_path / "store"), "OMP_NUM_THREADS": "1"}
    overrides = [o for o in tiny_overrides(tiny_llama) if not o.startswith("stages.sft.max_steps")]
    command = [sys.executable, str(ROOT / "main.py"), *overrides, *DDP_CPU, "stages.sft.max_steps=100000",
               f"hydra.run.dir={tmp_path / 'run'}"]
    chain = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    deadline = time.time() + 240
    while 1 not in _worker_ranks() and time.time() < deadline and chain.poll() is None:
        time.sleep(1)
    time.sleep(8)  # into training
    ranks = _worker_ranks()
    assert 1 in ranks, "rank 1 never started"
    os.kill(ranks[1], signal.SIGKILL)
    killed = time.time()
    output, _ = chain.communicate(timeout=120)
    assert chain.returncode != 0 and time.time() - killed < 60
    assert "2-process job failed" in output and "rank: 1" in output, output[-3000:]
    assert not list((tmp_path / "store").glob("adapter/*/artifact.json"))  # nothing that looks finished
    record = json.loads((tmp_path / "run" / "chain.json").read_text())
    sft = next(s for s in record["stages"] if s["name"] == "sft")
    assert record["status"] == "failed" and sft["status"] == "failed"
    assert not _worker_ranks()  # no orphaned rank
