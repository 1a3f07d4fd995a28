"""A stage in its own process: `python -m pipeline.engine.worker JOB`, or one rank of a distributed
training stage under `python -m torch.distributed.run ... -m pipeline.engine.worker JOB`
(pipeline/engine/launch.py writes JOB and starts it). Every rank rebuilds the stage from the job file
and runs it; the Trainer synchronises them. Rank 0 alone speaks, logs and writes `result.json`."""
from __future__ import annotations

import json
import os
import sys
import tempfile
import warnings
from pathlib import Path

from pipeline.artifact import write_json_atomic
from pipeline.engine.context import Inputs, StageContext
from pipeline.engine.launch import RESULT_FILE, WORKER_LOGS, import_user_modules, job_fields
from pipeline.engine.runner import seed_everything
from pipeline.engine.tracking import LoggerConfig, Tracker
from pipeline.models.peak_memory import PeakMemory, peak_metrics
from pipeline.processes import die_with_parent


class RankContext(StageContext):
    """A stage context whose log lines come from rank 0 only (every rank runs the same code)."""

    rank: int = 0

    def log(self, message: str) -> None:
        if self.rank == 0:
            super().log(message)


def main(job_path: str) -> None:
    die_with_parent()  # a rank under torchrun: torchrun dies with the runner, the ranks with torchrun
    # DeepSpeed calls torch.distributed's old collective names; torch warns on every step otherwise
    warnings.filterwarnings("ignore", message=r"`torch\.distributed\.\w+` is deprecated", category=FutureWarning)
    job = json.loads(Path(job_path).read_text())
    import_user_modules(job.get("modules") or [])
    fields = job_fields(job)
    rank = int(os.environ.get("RANK", "0"))
    out_dir = Path(job["out_dir"])
    logs = out_dir / WORKER_LOGS if rank == 0 else Path(tempfile.mkdtemp(prefix=f"tunechain-rank{rank}-"))
    logs.mkdir(parents=True, exist_ok=True)
    tracker = Tracker(LoggerConfig(backends=[]), logs, {}, name=job["name"], group=None)
    ctx = RankContext(name=job["name"], out_dir=out_dir, run_dir=Path(job["run_dir"]), model=fields["model"],
                      device=job["device"], seed=int(job["seed"]), tracker=tracker, chain=fields["chain"],
                      hardware=job["hardware"])
    ctx.rank = rank
    import torch

    if job["device"] == "cpu":
        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    else:  # "cuda" means this rank's GPU from here on (model.to("cuda"), QLoRA's device_map)
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        from accelerate import PartialState

        PartialState()  # the process group (gloo / nccl) before any model loads: FSDP's sharded loading needs it
    seed_everything(ctx.seed)
    with PeakMemory(ctx.device) as peak:
        artifact = fields["spec"].run(fields["cfg"], Inputs(fields["inputs"]), ctx)
    if rank == 0:
        of = " (rank 0)" if int(os.environ.get("WORLD_SIZE", "1")) > 1 else ""
        artifact.metrics.update(peak_metrics(peak.result(), job.get("planned_memory_mb"), of=of))
        write_json_atomic(out_dir / RESULT_FILE, artifact.to_json())


if __name__ == "__main__":
    main(sys.argv[1])
