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
from omegaconf import OmegaConf

from conftest import ROOT, compose, tiny_overrides
from pipeline.engine import launch, registry
from pipeline.errors import ConfigError, PlanError

DDP_CPU = ["hardware=ddp", "hardware.num_processes=2", "hardware.device=cpu"]


def test_launch_command_per_profile():
    single = launch.launch_command({"num_processes": 4}, "job.json")
    assert single[1:] == ["-m", "torch.distributed.run", "--nproc-per-node=4", "--standalone",
                          "-m", "pipeline.engine.worker", "job.json"]
    nodes = launch.launch_command({"num_processes": 8, "num_nodes": 2, "rdzv_endpoint": "node0:29400"}, "j")
    assert "--nnodes=2" in nodes and "--rdzv-backend=c10d" in nodes and "--rdzv-endpoint=node0:29400" in nodes
    assert "--standalone" not in nodes
    sft, dpo, ev = registry.get("sft"), registry.get("dpo"), registry.get("eval")
    assert launch.is_distributed(sft, {"num_processes": 2}) and launch.is_distributed(dpo, {"num_nodes": 2})
    assert not launch.is_distributed(ev, {"num_processes": 2}) and not launch.is_distributed(sft, {})


@pytest.mark.parametrize("hardware, error, message", [
    ({"num_processes": 2, "num_nodes": 2}, ConfigError, r"hardware\.rdzv_endpoint: num_nodes is 2"),
    ({"num_processes": 0}, ConfigError, r"must be >= 1"),
])
def test_bad_profiles_fail_at_plan_time(hardware, error, message):
    with pytest.raises(error, match=message):
        launch.check(hardware, "cpu")


def test_deepspeed_missing_fails_at_plan_time(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "deepspeed" else real(name, *a))
    with pytest.raises(PlanError, match=r"hardware\.deepspeed: DeepSpeed is not installed"):
        launch.check({"num_processes": 2, "deepspeed": {"zero_optimization": {"stage": 2}}}, "cpu")


def test_offload_switches_become_deepspeed_keys():
    from pipeline.training.common import deepspeed_config

    profile = compose(["hardware=deepspeed_zero3", "hardware.offload_optimizer=true"]).hardware
    config = deepspeed_config(OmegaConf.to_container(profile))
    assert config["zero_optimization"]["stage"] == 3
    assert config["zero_optimization"]["offload_optimizer"] == {"device": "cpu", "pin_memory": True}
    assert "offload_param" not in config["zero_optimization"]


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


def _worker_ranks(store: Path) -> dict[int, int]:
    """rank -> pid of the tunechain workers of the chain using `store` (read from their environment; other
    chains on this machine are not this test's)."""
    import psutil

    found = {}
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if "pipeline.engine.worker" in " ".join(proc.info["cmdline"] or []):
                environ = proc.environ()
                if environ.get("TUNECHAIN_STORE") == str(store):
                    found[int(environ.get("RANK", "-1"))] = proc.pid
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
    while 1 not in _worker_ranks(tmp_path / "store") and time.time() < deadline and chain.poll() is None:
        time.sleep(1)
    time.sleep(8)  # into training
    ranks = _worker_ranks(tmp_path / "store")
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
    assert not _worker_ranks(tmp_path / "store")  # no orphaned rank


def _two_process_chain(tiny_llama, tmp_path, profile: str, *extra):
    from pipeline.engine.runner import run_chain

    recipe = [o for o in extra if o.startswith("recipe=")]
    common = [o for o in tiny_overrides(tiny_llama) if not (recipe and o.startswith("stages.eval_"))]
    cfg = compose([*recipe, *common, f"hardware={profile}", "hardware.num_processes=2",
                   "hardware.device=cpu", "hardware.num_threads=1", *[o for o in extra if o not in recipe], f"paths.store={tmp_path / 'store'}"])
    record = run_chain(cfg, tmp_path / "run", "chain", [], None)
    assert record["status"] == "done"
    return {s["name"]: s for s in record["stages"]}


def _adapter(stage: dict) -> dict:
    from safetensors.torch import load_file

    return load_file(Path(stage["artifact"]) / "adapter_model.safetensors")


@pytest.mark.slow
def test_zero3_creates_the_weights_partitioned_and_saves_gathered_adapters(tiny_llama, tmp_path):
    """DeepSpeed ZeRO-3 on 2 CPU processes (gloo): SFT then DPO, each rank holding half the weights."""
    import torch

    pytest.importorskip("deepspeed")
    stages = _two_process_chain(
        tiny_llama, tmp_path, "deepspeed_zero3", "recipe=sft_dpo", "~stages.eval_sft", "~stages.eval_dpo",
        "data.sft.limit=32", "stages.sft.learning_rate=1e-2", "data.preference.limit=24", "data.preference_test.limit=8",
        "stages.dpo.max_steps=3", "stages.dpo.per_device_train_batch_size=2", "stages.dpo.per_device_eval_batch_size=4",
        "stages.dpo.logging_steps=1", "stages.dpo.learning_rate=1e-3")
    assert stages["sft"]["metrics"]["rank_param_share"] == pytest.approx(0.5, abs=0.01)  # never whole on one rank
    assert stages["dpo"]["metrics"]["world_size"] == 2
    assert stages["dpo"]["metrics"]["loss_first"] == pytest.approx(0.693147, abs=1e-4)  # still ln 2
    sft, dpo = _adapter(stages["sft"]), _adapter(stages["dpo"])
    lora_b = [k for k in sft if "lora_B" in k]
    assert lora_b and all(sft[k].abs().sum() > 0 for k in lora_b)  # gathered values, not empty partitions
    assert sft.keys() == dpo.keys() and all(sft[k].shape == dpo[k].shape for k in sft)
    assert any(not torch.equal(sft[k], dpo[k]) for k in sft)


@pytest.mark.slow
def test_fsdp2_trains_on_two_cpu_processes(tiny_llama, tmp_path):
    stages = _two_process_chain(tiny_llama, tmp_path, "fsdp", "stages.eval_base.tasks=[math]",
                                "stages.eval_tuned.tasks=[math]", "stages.eval_base.limit=4", "stages.eval_tuned.limit=4")
    sft = stages["sft"]
    assert sft["metrics"]["world_size"] == 2 and sft["metrics"]["train_steps"] == 4
    from transformers import AutoModelForCausalLM

    base = dict(AutoModelForCausalLM.from_pretrained(tiny_llama).named_modules())
    for key, value in _adapter(sft).items():  # whole (gathered) LoRA matrices, not one rank's shard
        layer = base[key.removeprefix("base_model.model.").split(".lora_")[0]]
        assert value.shape == ((16, layer.in_features) if ".lora_A." in key else (layer.out_features, 16)), key


TINY_PAIRS = ["data.preference.limit=12", "data.preference_test.limit=4"]
NEW_STAGES = {  # each issue-23 stage after a 2-step SFT, 2 optimizer steps on 2 processes (DDP, gloo)
    "kto": ["recipe=sft_kto", "~stages.eval_sft", "~stages.eval_kto", *TINY_PAIRS, "stages.kto.max_steps=2",
            "stages.kto.per_device_train_batch_size=2", "stages.kto.per_device_eval_batch_size=4"],
    "orpo": ["recipe=sft_orpo", "~stages.eval_sft", "~stages.eval_orpo", *TINY_PAIRS, "stages.orpo.max_steps=2",
             "stages.orpo.per_device_train_batch_size=2", "stages.orpo.per_device_eval_batch_size=4"],
    "simpo": ["recipe=sft_simpo", "~stages.eval_sft", "~stages.eval_simpo", *TINY_PAIRS, "stages.simpo.max_steps=2",
              "stages.simpo.per_device_train_batch_size=2", "stages.simpo.per_device_eval_batch_size=4"],
    "rloo": ["recipe=reward_rloo", "~stages.eval_sft", "~stages.grpo", "~stages.eval_grpo", "~stages.eval_rloo",
             *TINY_PAIRS, "stages.reward.max_steps=2", "stages.reward.per_device_train_batch_size=2",
             "stages.reward.per_device_eval_batch_size=4", "data.prompts.limit=8", "stages.rloo.max_steps=2",
             "stages.rloo.num_generations=2", "stages.rloo.per_device_train_batch_size=2",
             "stages.rloo.max_completion_length=6", "stages.rloo.use_vllm=false"],
    "gkd": ["recipe=sft_gkd", "~stages.eval_teacher", "~stages.eval_sft_student", "~stages.eval_gkd",
            "stages.teacher.max_steps=2", "stages.teacher.per_device_train_batch_size=2", "stages.sft_student.max_steps=2",
            "stages.sft_student.per_device_train_batch_size=2", "stages.gkd.max_new_tokens=6",
            # step 0 the data's answers, step 1 the student's with the data's beside them (a second forward)
            "stages.gkd.lmbda=1.0", "stages.gkd.on_policy_after=1", "stages.gkd.alpha_on_student_answers=true"],
}


@pytest.mark.slow
@pytest.mark.parametrize("kind", sorted(NEW_STAGES))
def test_new_alignment_stages_train_on_two_processes(kind, tiny_llama, tmp_path):
    from pipeline.engine.runner import run_chain

    sft = [] if kind == "gkd" else ["stages.sft.max_steps=2", "stages.sft.per_device_train_batch_size=2"]
    cfg = compose([*NEW_STAGES[kind], *sft, f"model.path={tiny_llama}", "model.name=tiny", "logger=none",
                   "hardware=ddp", "hardware.num_processes=2", "hardware.device=cpu", "hardware.num_threads=1",
                   "data.sft.limit=16", f"paths.store={tmp_path / 'store'}"])
    record = run_chain(cfg, tmp_path / "run", kind, [], None)
    assert record["status"] == "done"
    stages = {s["name"]: s for s in record["stages"]}
    trained = stages[kind]["metrics"]
    assert trained["world_size"] == 2 and trained["train_steps"] == 2
    if kind == "rloo":
        assert stages["reward"]["metrics"]["world_size"] == 2
        assert (Path(stages["reward"]["artifact"]) / "model.safetensors").is_file()


@pytest.mark.slow
# DDP shares the pool as ZeRO-3 does, without the gathering (its launch: test_two_process_sft_on_cpu_through_the_runner)
@pytest.mark.parametrize("profile, shared", [("deepspeed_zero3", "measured 6 a process"), ("fsdp", "measured by rank 0 alone")])
def test_difficulty_filter_measures_a_share_of_the_pool_on_each_process(profile, shared, tiny_llama, tmp_path,
                                                                        monkeypatch, capfd):
    """Two ranks measure every other prompt each and both train on the same kept prompts: difficulty.jsonl holds
    the whole pool once, and the kept count is the training set's. Under ZeRO-3 each rank holds half of every
    weight, gathered for the measuring; under FSDP rank 1 holds none before training, so rank 0 measures all."""
    import os

    if profile == "deepspeed_zero3":
        pytest.importorskip("deepspeed")
    from pipeline.engine.runner import run_chain

    (tmp_path / "coin_rewards.py").write_text(  # passes about half the samples: most prompts land in (0, 1)
        "def coin(completions, **kwargs):\n    return [float(len(str(c)) % 2) for c in completions]\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]))
    cfg = compose(["recipe=sft_grpo", "~stages.eval_sft", "~stages.eval_grpo", f"model.path={tiny_llama}",
                   "model.name=tiny", "logger=none", f"hardware={profile}", "hardware.num_processes=2",
                   "hardware.device=cpu", "hardware.num_threads=1", "data.sft.limit=16",
                   "stages.sft.max_steps=2", "stages.sft.per_device_train_batch_size=2", "data.prompts.limit=16",
                   "stages.grpo.max_steps=2", "stages.grpo.num_generations=2", "stages.grpo.per_device_train_batch_size=2",
                   "stages.grpo.max_completion_length=6", "stages.grpo.use_vllm=false",
                   "stages.grpo.difficulty.samples=4", "stages.grpo.difficulty.pool=12",
                   "stages.grpo.difficulty.reward=coin_rewards:coin", f"paths.store={tmp_path / 'store'}"])
    record = run_chain(cfg, tmp_path / "run", "sft_grpo", [], None)
    grpo = {s["name"]: s for s in record["stages"]}["grpo"]
    rows = [json.loads(line) for line in (Path(grpo["artifact"]) / "difficulty.jsonl").read_text().splitlines()]
    assert len(rows) == 12 and len({json.dumps(r["prompt"]) for r in rows}) == 12
    assert grpo["metrics"]["world_size"] == 2 and grpo["metrics"]["difficulty_measured"] == 12
    assert grpo["metrics"]["difficulty_kept"] == sum(r["kept"] for r in rows) == grpo["metrics"]["train_records"]
    assert f"over 4 samples, {shared}" in capfd.readouterr().out
