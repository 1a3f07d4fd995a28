"""Stopping on SIGTERM (a scheduler, `kill`) or Ctrl-C (SIGINT) without losing work or leaving a record
that says `running` forever. While the chain runs (pipeline/engine/runner.py), the first such signal:
- during a training stage, asks its trainer to save a checkpoint at the end of the current step and stop
  (pipeline/training/checkpoints.py's callback), within `stop_grace_s`; the stage then ends as `Interrupted`
  and its temporary folder keeps the checkpoint for the next run to resume from;
- anywhere else, or when the grace runs out, or on a second signal, raises `Interrupted` at once.
The runner records the chain and the stage as interrupted and the command exits with 128 + the signal
(130 for Ctrl-C, 143 for SIGTERM), as a shell reports a process the signal ended.
"""
from __future__ import annotations

import contextlib
import signal
from typing import Iterator

from pipeline.ranges import Range

SIGNALS = (signal.SIGTERM, signal.SIGINT)
GRACE_RANGE = Range(low=0, low_open=True)


class Interrupted(BaseException):
    """The run was asked to stop. A BaseException, as KeyboardInterrupt is: a stage's `except Exception`
    (and the runner's handling of optional stages) must not take it for a stage's failure."""

    def __init__(self, signum: int, saved: bool):
        self.signum, self.saved = signum, saved
        super().__init__(f"{signal.Signals(signum).name}: stopped" + (" after saving a checkpoint" if saved else ""))

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class _State:
    signum: int | None = None    # the signal that asked to stop, once one did
    listening = False            # a trainer checks `requested()` at every step end
    grace_s: float = 0.0


_state = _State()


def requested() -> int | None:
    """The stop signal received, if any (for a trainer's step-end check)."""
    return _state.signum


@contextlib.contextmanager
def listening() -> Iterator[None]:
    """While a trainer runs: the first signal is left to it (save, then stop) for at most the grace."""
    _state.listening = True
    try:
        yield
    finally:
        _state.listening = False
        signal.setitimer(signal.ITIMER_REAL, 0)  # the trainer has stopped: what follows is the runner's


@contextlib.contextmanager
def handled(grace_s: float) -> Iterator[None]:
    """Install the handlers for the block (the main thread only, as Python's signal handlers are)."""
    _state.signum, _state.listening, _state.grace_s = None, False, float(grace_s)
    previous = {s: signal.signal(s, _on_signal) for s in SIGNALS}
    previous_alarm = signal.signal(signal.SIGALRM, _on_grace_over)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        for s, handler in previous.items():
            signal.signal(s, handler)
        signal.signal(signal.SIGALRM, previous_alarm)


def _on_signal(signum: int, frame) -> None:
    if _state.signum is None and _state.listening:
        _state.signum = signum
        print(f"\n{signal.Signals(signum).name}: saving a checkpoint at the end of this step, then stopping "
              f"(at most {_state.grace_s:g} s, stop_grace_s; again to stop now)", flush=True)
        signal.setitimer(signal.ITIMER_REAL, _state.grace_s)
        return
    _state.signum = _state.signum or signum
    raise Interrupted(_state.signum, saved=False)


def _on_grace_over(signum: int, frame) -> None:
    raise Interrupted(_state.signum or signal.SIGTERM, saved=False)


def grace_problems(value) -> list[str]:
    return [] if value in GRACE_RANGE else [f"stop_grace_s: {value!r}; valid: {GRACE_RANGE}"]
