"""Stages in their own processes: training stages on several processes (and machines) through an
existing launcher, torchrun; and stages that load native code (llama.cpp, bitsandbytes and GPTQ
kernels) as one child process (`python -m pipeline.engine.worker <job>`), so a segfault or an
out-of-memory kill fails that stage, named with its signal and last lines, not the whole chain.

The chain runner stays one process: it plans, fingerprints, evaluates and commits. A training stage
whose hardware profile asks for more than one process is written to a job file in the stage's
temporary store folder and started as `python -m torch.distributed.run ... -m pipeline.engine.worker
<job>`; every rank runs the stage (transformers' Trainer reads torchrun's environment and wraps the
model in DDP, or DeepSpeed / FSDP when the profile says so), rank 0 saves the artifact and writes
its manifest to `result.json`. The runner streams the job's output, fails the stage with the last
lines when a rank fails (torchrun stops the others), and commits only a finished result.

    python main.py hardware=ddp hardware.num_processes=2 hardware.device=cpu   # 2 CPU processes (gloo)
"""
from __future__ import annotations

import collections
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from pipeline.artifact import Artifact, write_json_atomic
from pipeline.engine import registry
from pipeline.engine.typed_config import typed_config
from pipeline.errors import ConfigError, PlanError, TunechainError
from pipeline.evaluation import registry as tasks
from pipeline.models.config import ModelConfig
from pipeline.processes import die_with_parent
from pipeline.ranges import Range

JOB_FILE, RESULT_FILE, WORKER_LOGS = "job.json", "result.json", ".worker"
FAILED_LINES = 30


class StageFailed(TunechainError):
    """A stage's process (or a rank of its job) ended without a result: an error, or a signal."""

    def __init__(self, message: str, signal_name: str | None = None, tail: list[str] | None = None):
        super().__init__(message)
        self.signal_name = signal_name
        self.tail = tail or []


def world(hardware: dict[str, Any]) -> tuple[int, int]:
    """(processes per node, nodes) that a hardware profile asks for."""
    processes, nodes = hardware.get("num_processes"), hardware.get("num_nodes")
    return int(1 if processes is None else processes), int(1 if nodes is None else nodes)


def is_distributed(spec, hardware: dict[str, Any]) -> bool:
    """A stage kind declared `@stage(..., distributed=True)` (it trains through a transformers Trainer, which runs
    under torchrun as it is), on a profile of more than one process."""
    processes, nodes = world(hardware)
    return spec.distributed and processes * nodes > 1


def launch_command(hardware: dict[str, Any], job_file: Path | str) -> list[str]:
    """torchrun for this profile: one node on a free local port, or several through a c10d rendezvous
    (run the same command on every node, or under `srun`)."""
    processes, nodes = world(hardware)
    command = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={processes}"]
    if nodes > 1:
        command += [f"--nnodes={nodes}", "--rdzv-backend=c10d", f"--rdzv-endpoint={hardware['rdzv_endpoint']}",
                    f"--rdzv-id={hardware.get('rdzv_id') or 'tunechain'}"]
    else:
        command.append("--standalone")
    return command + ["-m", "pipeline.engine.worker", str(job_file)]


# conf/hardware/*.yaml is a free-form dict (DeepSpeed and FSDP settings pass through): its own keys' ranges
HARDWARE_RANGES = {"num_processes": Range(low=1), "num_nodes": Range(low=1), "num_threads": Range(low=1),
                   "dataset_num_proc": Range(low=1),
                   "device": Range(choices=("cpu", "cuda"))}  # null: cuda when available, else cpu


def hardware_problems(hardware: dict[str, Any]) -> list[str]:
    return [f"hardware.{key}: {hardware[key]!r}; valid: {rule}" for key, rule in HARDWARE_RANGES.items()
            if hardware.get(key) is not None and hardware[key] not in rule]


def check(hardware: dict[str, Any], device: str) -> None:
    """Plan time: what a multi-process profile needs, each missing piece in one line."""
    import importlib.util

    processes, nodes = world(hardware)
    if processes < 1 or nodes < 1:
        raise ConfigError(f"hardware.num_processes / num_nodes: must be >= 1, got {processes} / {nodes}")
    if nodes > 1 and not hardware.get("rdzv_endpoint"):
        raise ConfigError(f"hardware.rdzv_endpoint: num_nodes is {nodes}; set the rendezvous host:port that every "
                          f"node reaches, e.g. hardware.rdzv_endpoint=node0:29400")
    if hardware.get("deepspeed"):
        if importlib.util.find_spec("deepspeed") is None:
            raise PlanError("hardware.deepspeed: DeepSpeed is not installed: pip install -e '.[deepspeed]'")
    if device == "cuda":
        import torch

        if processes > torch.cuda.device_count():
            raise PlanError(f"hardware.num_processes: {processes} processes per node, but this machine has "
                            f"{torch.cuda.device_count()} CUDA device(s)")


def write_job(step, inputs, ctx) -> Path:
    """The stage as the worker rebuilds it: kind, typed config, inputs, the chain so far, model, device."""
    job = {
        "kind": step.kind, "name": step.name,
        "config": OmegaConf.to_container(OmegaConf.structured(step.cfg), enum_to_str=True),
        "inputs": [a.to_json() for a in inputs.artifacts],
        "chain": {name: a.to_json() for name, a in ctx.chain.items()},
        "model": OmegaConf.to_container(OmegaConf.structured(ctx.model), enum_to_str=True),
        "device": ctx.device, "seed": ctx.seed, "hardware": ctx.hardware,
        "out_dir": str(ctx.out_dir), "run_dir": str(ctx.run_dir),
        "planned_memory_mb": round(step.memory_bytes / 2**20, 1) if step.memory_bytes else None,
        "modules": user_modules(),
    }
    path = Path(ctx.out_dir) / JOB_FILE
    write_json_atomic(path, job)
    return path


BUILT_IN = ("pipeline.", "exports.")


def user_modules() -> list[dict[str, str]]:
    """Modules outside tunechain that registered stage kinds or eval tasks in this process (a user's own
    package or file): the child process imports them too, so it knows what the plan knows."""
    import importlib

    functions = [registry.get(kind).run for kind in registry.kinds()] + [t.run for t in tasks.all_tasks().values()]
    found = {}
    for fn in functions:
        name = fn.__module__
        if name.startswith(BUILT_IN) or name in found or name == "__main__":
            continue
        origin = getattr(importlib.import_module(name), "__file__", None)
        found[name] = str(Path(origin).resolve().parent) if origin else ""
    return [{"name": name, "folder": folder} for name, folder in sorted(found.items())]


def import_user_modules(modules: list[dict[str, str]]) -> None:
    import importlib

    for module in modules:
        if module["folder"] and module["folder"] not in sys.path:
            sys.path.append(module["folder"])
        importlib.import_module(module["name"])


def run_in_child(step, inputs, ctx) -> Artifact:
    """Run one stage in its own process (a torchrun job for a distributed training stage); returns its
    (rank 0's) artifact. The child's output is streamed; its training log rows are replayed here."""
    job_file = write_job(step, inputs, ctx)
    distributed = is_distributed(step.spec, ctx.hardware)
    processes, nodes = world(ctx.hardware) if distributed else (1, 1)
    command = launch_command(ctx.hardware, job_file) if distributed else \
        [sys.executable, "-m", "pipeline.engine.worker", str(job_file)]
    if distributed:
        ctx.log(f"launching {processes * nodes} processes: {' '.join(command)}")
    env = {**os.environ, "OMP_NUM_THREADS": str(_threads_per_rank(ctx, processes)),
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[2]), os.environ.get("PYTHONPATH", "")])}
    if ctx.hardware.get("fsdp"):  # as `accelerate launch` sets it: transformers then loads on rank 0 only
        env["ACCELERATE_USE_FSDP"] = "true"
    if ctx.device == "cpu":  # DeepSpeed's CPU accelerator (gloo) instead of guessing, and no warning about it
        env.setdefault("DS_ACCELERATOR", "cpu")
    tail: collections.deque[str] = collections.deque(maxlen=FAILED_LINES)
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                               start_new_session=True, preexec_fn=die_with_parent)
    try:
        for line in process.stdout:  # type: ignore[union-attr]
            print(line, end="", flush=True)
            tail.append(line.rstrip("\n"))
        code = process.wait()
    except BaseException:  # Ctrl-C or the runner failing: take every rank down with us
        _stop(process)
        raise
    result = Path(ctx.out_dir) / RESULT_FILE
    if code != 0 or not result.is_file():
        raise _failure(step.name, code, distributed, processes * nodes, list(tail))
    artifact = Artifact.from_json(json.loads(result.read_text()))
    _replay_logs(Path(ctx.out_dir) / WORKER_LOGS, ctx)
    for leftover in (job_file, result):
        leftover.unlink(missing_ok=True)
    shutil.rmtree(Path(ctx.out_dir) / WORKER_LOGS, ignore_errors=True)
    if distributed:
        artifact.metrics["world_size"] = processes * nodes
        artifact.meta["launch"] = " ".join(command)
    return artifact


def _failure(name: str, code: int, distributed: bool, size: int, tail: list[str]) -> StageFailed:
    """What ended the stage: a signal (segfault, OOM kill) by name, or the exit code, with the last lines."""
    signal_name = signal.Signals(-code).name if code < 0 and -code in signal.valid_signals() else None
    if code > 128 and code - 128 in signal.valid_signals():  # a shell-style 128+N exit
        signal_name = signal.Signals(code - 128).name
    how = f"died of {signal_name}" if signal_name else f"exited with {code}"
    what = f"the {size}-process job failed (torchrun exit {code})" if distributed else f"the stage process {how}"
    if signal_name == "SIGKILL" and not distributed:
        what += " (an out-of-memory kill, or kill -9)"
    return StageFailed(f"stages.{name}: {what}; its last lines:\n" + "\n".join(tail), signal_name, tail)


def _threads_per_rank(ctx, processes: int) -> int:
    threads = (ctx.hardware or {}).get("num_threads")
    if threads:
        return int(threads)
    return max(1, (os.cpu_count() or 1) // processes) if ctx.device == "cpu" else 1


def _replay_logs(folder: Path, ctx) -> None:
    """Rank 0's training log rows, into the chain's tracker (metrics.jsonl and W&B), in order."""
    path = folder / "metrics.jsonl"
    if not path.is_file():
        return
    for line in path.read_text().splitlines():
        row = json.loads(line)
        metrics = {k: v for k, v in row.items() if k not in ("time", "stage", "step")}
        ctx.tracker.log(ctx.name, metrics, step=row.get("step"))


def _stop(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=20)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)


def job_fields(job: dict) -> dict[str, Any]:
    """The job's fields a worker needs, with the dataclasses rebuilt (pipeline.engine.worker)."""
    spec = registry.get(job["kind"])
    return {
        "spec": spec,
        "cfg": typed_config(OmegaConf.create(job["config"]), spec.config_cls, f"stages.{job['name']}"),
        "model": typed_config(OmegaConf.create(job["model"]), ModelConfig, "model"),
        "inputs": [Artifact.from_json(a) for a in job["inputs"]],
        "chain": {name: Artifact.from_json(a) for name, a in job["chain"].items()},
    }
