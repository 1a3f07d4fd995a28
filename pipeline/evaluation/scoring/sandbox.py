"""Where model-written code runs: a box that cannot reach the network, the evaluator, its secrets or
anything outside a small private folder.

Modes (`settings.code.sandbox`):
  - `namespaces` (default): `unshare` gives the candidate its own user, pid, network, mount, IPC and
    UTS namespaces; box_init.py hides /tmp and the home folders, makes every mount read-only but the
    box (a 64 MB tmpfs), and execs the driver with no capabilities and no_new_privs. Killing the
    namespace's first process kills everything the candidate started (setsid included).
  - `limits`: the weaker mode, for machines without user namespaces: a plain subprocess in a fresh
    folder with the same resource limits and clean environment, but the host's filesystem and
    network. The plan refuses it unless chosen by name.
In both: resource limits (address space, CPU seconds, file size, processes), a clean environment
started from a process that holds no secrets (the evaluator's variables never reach it), and the
verdict on a pipe with a nonce (box_driver.py). Processes are also capped by a pids cgroup where the
machine lets us make one (root, whose RLIMIT_NPROC the kernel ignores, needs it); `pids_cap()` says
which cap holds.
"""
from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

MODES = ("namespaces", "limits")
UNSHARE = ["unshare", "--user", "--map-root-user", "--net", "--pid", "--fork", "--kill-child", "--mount",
           "--mount-proc", "--ipc", "--uts", "--"]
HERE = Path(__file__).parent
STDERR_TAIL = 2000  # characters of the candidate's stderr kept in results
CGROUP_ROOT = Path("/sys/fs/cgroup")


@dataclass(frozen=True)
class Limits:
    timeout_s: float = 5.0   # wall clock, the tests included
    memory_mb: int = 512     # address space of each process
    pids: int = 32           # processes at once
    file_mb: int = 16        # the largest file it may write (stdout and stderr included)
    box_mb: int = 64         # the private tmpfs it works in (namespaces mode)


def clean_env() -> dict[str, str]:
    """Nothing from the evaluator's environment but a plain PATH; one thread for numeric libraries."""
    return {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1",
            "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _hidden_and_kept() -> tuple[list[str], list[str]]:
    """The home folders to hide, and the Python installation folders inside them (or /tmp) to keep."""
    hide = sorted({str(p) for p in (Path("/root"), Path("/home"), Path.home().resolve()) if p.is_dir()})
    hide = [p for p in hide if not any(p != q and p.startswith(q + "/") for q in hide)]
    under = ("/tmp", *hide)
    keep = {str(Path(p).resolve()) for p in (sys.base_prefix, sys.prefix)}
    keep = {p for p in keep if any(p == q or p.startswith(q + "/") for q in under)}
    return hide, sorted(p for p in keep if not any(p != q and p.startswith(q + "/") for q in keep))


# ---------------------------------------------------------------------------------------------
# A pids cgroup (v2, or v1's pids hierarchy) for one run, where this process may make one

def _own_cgroup() -> Path | None:
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if "pids" in controllers.split(","):
            return CGROUP_ROOT / "pids" / path.lstrip("/")
    for line in lines:
        if line.startswith("0::"):
            return CGROUP_ROOT / line[3:].lstrip("/")
    return None


@contextlib.contextmanager
def _pids_cgroup(pids: int):
    """A fresh cgroup capped at `pids` processes (None where none can be made), emptied and removed after."""
    parent = _own_cgroup()
    group = parent / f"tunechain-box-{secrets.token_hex(6)}" if parent else None
    try:
        group.mkdir()
        (group / "pids.max").write_text(str(pids))
    except (OSError, AttributeError):
        if group is not None and group.is_dir():
            with contextlib.suppress(OSError):
                group.rmdir()
        yield None
        return
    try:
        yield group
    finally:
        for _ in range(50):  # kill what is left, then remove the group once it is empty
            with contextlib.suppress(OSError):
                for pid in (group / "cgroup.procs").read_text().split():
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.kill(int(pid), signal.SIGKILL)
            try:
                group.rmdir()
                break
            except OSError:
                time.sleep(0.02)


@functools.cache
def pids_cap() -> str:
    """How the process count is capped here: 'cgroup', 'rlimit' (not root) or 'none'."""
    with _pids_cgroup(8) as group:
        if group is not None:
            return "cgroup"
    return "rlimit" if os.geteuid() != 0 else "none"


# ---------------------------------------------------------------------------------------------
# Running one program and its tests

def run(program: str, tests: str, limits: Limits = Limits(), mode: str = "namespaces") -> dict:
    """Run `program` then `tests` in the box. Returns {status, stderr_tail, seconds}: status is passed,
    failed (the tests raised), error (the program raised, exited, or spoiled its verdict), timeout
    (wall clock or CPU) or memory."""
    if mode not in MODES:
        raise ValueError(f"sandbox mode {mode!r}: expected one of {', '.join(MODES)}")
    nonce = secrets.token_hex(16)
    verdict_read, verdict_write = os.pipe()
    hide, keep = _hidden_and_kept()
    with tempfile.TemporaryDirectory(prefix="tunechain-box-") as folder:
        payload = {"isolate": mode == "namespaces", "folder": folder, "hide": hide, "keep": keep,
                   "box_mb": limits.box_mb, "memory_mb": limits.memory_mb, "file_mb": limits.file_mb,
                   "cpu_s": max(1, int(limits.timeout_s + 0.999)) + 1, "pids": limits.pids,
                   "nonce": nonce, "verdict_fd": verdict_write, "python": sys.executable, "env": clean_env(),
                   "files": {"program.py": program, "tests.py": tests,
                             "driver.py": (HERE / "box_driver.py").read_text(encoding="utf-8")}}
        command = [sys.executable, "-I", str(HERE / "box_init.py")]
        if mode == "namespaces":
            command = UNSHARE + command
        started = time.monotonic()
        timed_out = False
        with _pids_cgroup(limits.pids + 3) as group, \
                open(Path(folder) / "stdout", "wb") as out, open(Path(folder) / "stderr", "wb") as err:
            join = _joiner(group)
            process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=out, stderr=err, cwd=folder,
                                       env=clean_env(), pass_fds=(verdict_write,), start_new_session=True,
                                       preexec_fn=join)
            os.close(verdict_write)
            try:
                process.stdin.write(json.dumps(payload).encode())
                process.stdin.close()
            except BrokenPipeError:
                pass
            try:
                process.wait(timeout=limits.timeout_s + 1.0)  # + the box's own start
            except subprocess.TimeoutExpired:
                timed_out = True
            finally:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(process.pid, signal.SIGKILL)  # unshare's --kill-child ends the namespace
                process.wait()
        seconds = round(time.monotonic() - started, 3)
        stderr_tail = _tail(Path(folder) / "stderr")
    verdict = _drain(verdict_read)
    return {"status": _status(verdict, nonce, timed_out, process.returncode, stderr_tail),
            "stderr_tail": stderr_tail, "seconds": seconds}


def _joiner(group: Path | None):
    """Runs in the child before exec: join the run's cgroup, so everything it starts is counted."""
    if group is None:
        return None
    procs = str(group / "cgroup.procs")

    def join() -> None:
        fd = os.open(procs, os.O_WRONLY)
        os.write(fd, str(os.getpid()).encode())
        os.close(fd)
    return join


def _drain(fd: int) -> str:
    """What the box wrote on the verdict pipe, without waiting for writers that might linger."""
    fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_NONBLOCK)
    chunks = []
    with contextlib.suppress(BlockingIOError):
        while chunk := os.read(fd, 4096):
            chunks.append(chunk)
            if sum(map(len, chunks)) > 4096:
                break
    os.close(fd)
    return b"".join(chunks).decode("utf-8", errors="replace")


def _tail(path: Path) -> str:
    try:
        with path.open("rb") as f:
            f.seek(max(0, path.stat().st_size - STDERR_TAIL))
            return f.read().decode("utf-8", errors="replace")
    except OSError:
        return ""


def _status(verdict: str, nonce: str, timed_out: bool, returncode: int, stderr_tail: str) -> str:
    if timed_out:
        return "timeout"
    if verdict.startswith(nonce + " "):
        claimed = verdict[len(nonce) + 1:]
        if claimed in ("passed", "failed", "error", "memory"):
            return "failed" if claimed == "passed" and returncode != 0 else claimed
    if verdict:
        return "error"  # something else was written on the verdict pipe: a spoiled verdict never passes
    if returncode in (-signal.SIGXCPU, -signal.SIGKILL, 128 + signal.SIGXCPU, 128 + signal.SIGKILL):
        return "timeout"  # CPU limit: soft, then hard (unshare reports its child's signal as 128 + n)
    if "MemoryError" in stderr_tail or "Cannot allocate memory" in stderr_tail:
        return "memory"
    if returncode in (-signal.SIGSEGV, -signal.SIGABRT, -signal.SIGBUS, 128 + signal.SIGSEGV, 128 + signal.SIGABRT):
        return "memory"  # an allocation failed inside C code
    return "error"  # no verdict: the candidate ended the process itself (sys.exit, os._exit, a signal)


@functools.cache
def namespaces_problem() -> str | None:
    """Why the namespaces box cannot run here (None when a trivial program passes in it)."""
    try:
        outcome = run("x = 1\n", "assert x == 1\n", Limits(timeout_s=20.0), "namespaces")
    except OSError as e:
        return f"cannot start unshare ({e})"
    if outcome["status"] == "passed":
        return None
    reason = outcome["stderr_tail"].strip().splitlines()[-1:] or [outcome["status"]]
    return f"a trivial program did not pass in it: {reason[0]}"
