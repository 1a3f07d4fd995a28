"""Child processes that die with the process that started them.

A stage's worker, a torchrun job and a model server run in their own session (so a Ctrl-C reaches
them only through the runner, which stops them in order). A runner killed with SIGKILL (kill -9, the
OOM killer) gets no chance to stop them; without this they would go on holding CPUs, GPU memory and
ports, and race the re-run that resumes the chain. Linux only (prctl); elsewhere it does nothing."""
from __future__ import annotations

import ctypes
import os
import signal
import sys

_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """Ask the kernel to SIGKILL this process when its parent ends. For `preexec_fn=` (between fork and
    exec; the setting survives exec) and for a process to call on itself (a rank under torchrun)."""
    if not sys.platform.startswith("linux"):
        return
    parent = os.getppid()
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # the parent ended before the request took effect
        os.kill(os.getpid(), signal.SIGKILL)
