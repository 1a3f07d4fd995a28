"""Runs inside the code sandbox: the candidate program, then its tests, in one namespace (as
HumanEval's own harness does), and one verdict written to fd 3.

The verdict channel is a pipe the evaluator reads, never a file: nothing in argv, the environment or
the box names it. A verdict counts only with the nonce read from fd 4, which is read and closed
before any candidate code runs and kept in this function's frame only. Everything a candidate could
use to find it in its own process is refused by an audit hook armed before the candidate runs
(frame and traceback introspection, tracing, gc object walks, ctypes, /proc/*/mem); the process is
made non-dumpable so a child it starts cannot read this one's memory either. Writing junk to fd 3
spoils the verdict, which then scores as failed. Refusals raise a ValueError subclass, so the
standard library's own fallbacks (namedtuple, warnings, typing read the caller's frame inside
`try/except ValueError`) keep working.

Tracebacks are reported without frames: phase, exception and line numbers (tb_lineno needs no frame).
"""
import os
import sys

VERDICT_FD, NONCE_FD = 3, 4
PR_SET_DUMPABLE = 4
DENIED_EVENTS = frozenset({"sys._getframe", "sys._current_frames", "sys.settrace", "sys.setprofile",
                           "sys._getframemodulename", "gc.get_objects", "gc.get_referrers", "gc.get_referents"})
# the ways to a frame object besides sys._getframe; each raises object.__getattr__
FRAME_ATTRIBUTES = frozenset({"tb_frame", "gi_frame", "cr_frame", "ag_frame"})


class SandboxDenied(ValueError):
    """What the box refuses a candidate."""


def _non_dumpable() -> None:
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)


def _hook(event, args):
    if event in DENIED_EVENTS or event.startswith("ctypes."):
        raise SandboxDenied(f"{event} is not allowed in the code sandbox")
    if event == "object.__getattr__" and len(args) > 1 and args[1] in FRAME_ATTRIBUTES:
        raise SandboxDenied(f"{args[1]} is not allowed in the code sandbox")
    if event == "open" and args and isinstance(args[0], (str, bytes)):
        path = os.fsdecode(args[0])
        if path.startswith("/proc/") and path.rstrip("/").rsplit("/", 1)[-1] in ("mem", "environ"):
            raise SandboxDenied(f"opening {path} is not allowed in the code sandbox")


def _describe(phase: str, error: BaseException) -> str:
    lines, tb = [], error.__traceback__
    while tb is not None:
        lines.append(str(tb.tb_lineno))
        tb = tb.tb_next
    try:
        message = f"{type(error).__name__}: {error}"
    except BaseException:  # a candidate's __str__ may raise
        message = type(error).__name__
    return f"{phase} (lines {' > '.join(lines[1:]) or '?'}): {message}\n"


def main() -> None:
    nonce = os.read(NONCE_FD, 256).decode().strip()
    os.close(NONCE_FD)
    os.set_inheritable(VERDICT_FD, False)
    _non_dumpable()
    sources = {}
    for name in ("program.py", "tests.py"):
        with open(name, encoding="utf-8") as handle:
            sources[name] = handle.read()
    sys.addaudithook(_hook)
    namespace = {"__name__": "__main__", "__builtins__": __builtins__}
    status = "passed"
    for name, status_on_error in (("program.py", "error"), ("tests.py", "failed")):
        try:
            exec(compile(sources[name], name, "exec"), namespace)
        except MemoryError:
            namespace.clear()  # free what the candidate holds before writing anything
            status = "memory"
        except BaseException as error:  # SystemExit included: a candidate's exit is not a pass
            status = status_on_error
            try:
                sys.stderr.write(_describe(name, error))
            except BaseException:
                pass
        if status != "passed":
            break
    sys.stdout.flush()
    sys.stderr.flush()
    os.write(VERDICT_FD, f"{nonce} {status}".encode())


main()
