"""Mid-stage checkpoints: a training stage saves the trainer's own checkpoint (weights or adapter,
optimizer, scheduler, RNG states, data position) into `trainer/checkpoint-N` of its temporary store
folder, every `checkpoint.every_steps` steps and at most every `checkpoint.every_minutes` of wall time,
keeping the last `checkpoint.keep`. After a crash or `kill -9`, the next run of the same chain takes that
folder over (pipeline/engine/store.py) and the trainer resumes from the newest complete checkpoint,
saying so in one line. The finished artifact holds no checkpoint (the trainer folder is removed).
A SIGTERM or Ctrl-C during training saves a checkpoint at the end of the step and stops the stage as
interrupted (pipeline/stopping.py), so the next run resumes from that step.
"""
from __future__ import annotations

import contextlib
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from pipeline import stopping
from pipeline.ranges import at_least, positive

TRAINER_DIR = "trainer"
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


@dataclass
class CheckpointSpec:
    every_steps: Optional[int] = at_least(1, 100, help="null: by time only")
    every_minutes: Optional[float] = positive(10.0, help="and at most this long apart (null: by steps only)")
    keep: int = at_least(1, 2, help="newest checkpoints kept while training")


def latest(out_dir: Path | str) -> Path | None:
    """The newest complete checkpoint under `out_dir/trainer` (trainer_state.json is written last)."""
    folder = Path(out_dir) / TRAINER_DIR
    if not folder.is_dir():
        return None
    complete = [p for p in folder.iterdir() if _CHECKPOINT.match(p.name) and (p / "trainer_state.json").is_file()]
    return max(complete, key=step_of, default=None)


def step_of(checkpoint: Path) -> int:
    return int(_CHECKPOINT.match(checkpoint.name).group(1))  # type: ignore[union-attr]


def trainer_args(spec: CheckpointSpec) -> dict:
    """Trainer arguments: saving is decided by the callback below; the trainer rotates old checkpoints."""
    return {"save_strategy": "no", "save_total_limit": spec.keep}


def callback(spec: CheckpointSpec):
    """A TrainerCallback that asks for a checkpoint by steps and by wall time, and at once when the run is
    asked to stop (then the stage ends as interrupted instead of saving a half-trained artifact)."""
    from transformers import TrainerCallback

    class _Checkpoints(TrainerCallback):
        last = time.monotonic()
        stopped_by: int | None = None
        listening = contextlib.ExitStack()

        def on_train_begin(self, args, state, control, **kwargs):
            self.listening.enter_context(stopping.listening())

        def on_step_end(self, args, state, control, **kwargs):
            by_steps = spec.every_steps and state.global_step % spec.every_steps == 0
            by_time = spec.every_minutes and time.monotonic() - self.last >= spec.every_minutes * 60
            if (by_steps or by_time) and state.global_step < state.max_steps:
                control.should_save = True
            if stopping.requested() and state.global_step < state.max_steps:
                self.stopped_by = stopping.requested()
                control.should_save = control.should_training_stop = True
            return control

        def on_save(self, args, state, control, **kwargs):
            self.last = time.monotonic()

        def on_train_end(self, args, state, control, **kwargs):
            self.listening.close()
            if self.stopped_by:
                raise stopping.Interrupted(self.stopped_by, saved=True)

    return _Checkpoints()


def resume_point(out_dir: Path, max_steps: int, log) -> str | None:
    """The checkpoint to resume from, announced (`resuming at step 150 of 300`), or None for a fresh start."""
    found = latest(out_dir)
    if found is None:
        return None
    total = f" of {max_steps}" if max_steps and max_steps > 0 else ""
    log(f"resuming at step {step_of(found)}{total} (from {found})")
    return str(found)
