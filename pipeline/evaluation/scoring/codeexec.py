"""Code generation scored by execution: pass@k over HumanEval-like problems.

Each candidate runs in its own `python -I` subprocess, in a fresh temporary folder, with a minimal
environment (none of the parent's variables, so no tokens or keys), resource limits set before
exec (address space, CPU seconds, file size, no core dumps), its own process group (killed as a
whole at the end) and a wall-clock timeout. This keeps mistakes (infinite loops, memory hogs,
stray files, sys.exit) from hurting the evaluating process; it is not a sandbox against code
written to escape, so run untrusted models' code in a container as well.

Problems (.jsonl, one per line): task_id, prompt, test, optional entry_point and canonical_solution.
`test` defines check(candidate) as HumanEval does; with an entry_point, `check(<entry_point>)` is
called after it. A completion continues the prompt (HumanEval), unless it already starts with it.
"""
from __future__ import annotations

import os
import resource
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from pipeline.data.problems import DataError, collect
from pipeline.data.readers import display, existing_file, read_jsonl

STATUSES = ("passed", "failed", "timeout", "error", "memory")
STDERR_TAIL = 2000        # characters of the candidate's stderr kept in results
OUTPUT_LIMIT_MB = 16      # RLIMIT_FSIZE: what a candidate may write (stdout/stderr files included)

# Runs in the child: the program, then the tests, each phase's failure told apart; the verdict goes
# to a result file under a nonce so a candidate's own sys.exit(0) can't pass for success.
_DRIVER = r'''
import sys, traceback
nonce, result = sys.argv[1], sys.argv[2]

def verdict(status):
    with open(result, "w") as f:
        f.write(nonce + " " + status)

def run(name, status_on_error):
    try:
        with open(name, encoding="utf-8") as f:
            source = f.read()
        exec(compile(source, name, "exec"), namespace)
        return True
    except MemoryError:
        namespace.clear()  # free what the candidate holds before writing anything
        verdict("memory")
        sys.stderr.write("MemoryError\n")
    except BaseException:
        traceback.print_exc()
        verdict(status_on_error)
    return False

namespace = {"__name__": "__main__", "__builtins__": __builtins__}
if run("program.py", "error") and run("tests.py", "failed"):
    verdict("passed")
sys.stdout.flush()
sys.stderr.flush()
'''


# ---------------------------------------------------------------------------------------------
# pass@k

def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c passed: 1 - C(n-c, k) / C(n, k), computed as the
    product 1 - prod_{i=n-c+1}^{n} (1 - k/i) (Chen et al. 2021), which never forms huge binomials."""
    if not (0 <= c <= n) or k < 1:
        raise ValueError(f"pass@k needs 0 <= c <= n and k >= 1, got n={n}, c={c}, k={k}")
    if k > n:
        raise ValueError(f"pass@{k} needs at least {k} samples per problem, got n={n}")
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


# ---------------------------------------------------------------------------------------------
# Running one candidate

def _limits(memory_mb: int, cpu_s: int):
    def apply() -> None:  # runs in the child between fork and exec
        memory = memory_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
        resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s + 1))
        resource.setrlimit(resource.RLIMIT_FSIZE, (OUTPUT_LIMIT_MB << 20, OUTPUT_LIMIT_MB << 20))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    return apply


def _minimal_env(folder: str) -> dict[str, str]:
    """Nothing from the parent's environment but a plain PATH; one thread for numeric libraries."""
    return {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": folder, "TMPDIR": folder, "LANG": "C.UTF-8",
            "PYTHONDONTWRITEBYTECODE": "1", "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1"}


def _kill_group(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _tail(path: Path) -> str:
    try:
        with path.open("rb") as f:
            f.seek(max(0, path.stat().st_size - STDERR_TAIL))
            return f.read().decode("utf-8", errors="replace")
    except OSError:
        return ""


def run_candidate(code: str, tests: str, timeout_s: float = 5.0, memory_mb: int = 512) -> dict:
    """Run `code` then `tests` in a limited `python -I` subprocess.

    Returns {passed, status, stderr_tail, seconds}; status is passed, failed (the tests raised),
    error (the program itself raised: syntax, import, name errors...), timeout (wall clock or CPU
    limit) or memory (MemoryError, or killed at the address-space limit)."""
    cpu_s = max(1, int(timeout_s + 0.999)) + 1
    with tempfile.TemporaryDirectory(prefix="tunechain-exec-") as folder:
        root = Path(folder)
        (root / "program.py").write_text(code, encoding="utf-8")
        (root / "tests.py").write_text(tests, encoding="utf-8")
        (root / "driver.py").write_text(_DRIVER, encoding="utf-8")
        nonce, result = secrets.token_hex(16), root / f"result-{secrets.token_hex(8)}"
        started = time.monotonic()
        timed_out = False
        with (root / "stdout").open("wb") as out, (root / "stderr").open("wb") as err:
            process = subprocess.Popen(
                [sys.executable, "-I", "-X", "utf8", str(root / "driver.py"), nonce, str(result)],
                cwd=folder, env=_minimal_env(folder), stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                preexec_fn=_limits(memory_mb, cpu_s), start_new_session=True, close_fds=True)
            try:
                process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                timed_out = True
            finally:
                _kill_group(process)  # the candidate and anything it started
                process.wait()
        seconds = round(time.monotonic() - started, 3)
        stderr_tail = _tail(root / "stderr")
        verdict = ""
        try:
            verdict = result.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            pass
    status = _status(verdict, nonce, timed_out, process.returncode, stderr_tail)
    return {"passed": status == "passed", "status": status, "stderr_tail": stderr_tail, "seconds": seconds}


def _status(verdict: str, nonce: str, timed_out: bool, returncode: int, stderr_tail: str) -> str:
    if timed_out:
        return "timeout"
    claimed = verdict.split(" ", 1)[1] if verdict.startswith(nonce + " ") else ""
    if claimed in STATUSES:
        return "failed" if claimed == "passed" and returncode != 0 else claimed
    if returncode in (-signal.SIGXCPU, -signal.SIGKILL):  # CPU limit: soft, then hard
        return "timeout"
    if "MemoryError" in stderr_tail or "Cannot allocate memory" in stderr_tail:
        return "memory"
    if returncode in (-signal.SIGSEGV, -signal.SIGABRT, -signal.SIGBUS):  # allocation failed in C code
        return "memory"
    return "error"  # no verdict: the candidate ended the process itself (sys.exit, os._exit, a signal)


# ---------------------------------------------------------------------------------------------
# Problems and evaluation

def load_code_problems(path: str | Path) -> list[dict]:
    """HumanEval-like problems from a .jsonl file; every line checked, errors name path:line."""
    resolved = existing_file(str(path))
    where = display(resolved)
    if resolved.suffix.lower() != ".jsonl":
        raise DataError(f"{where}: code problems must be a .jsonl file, got '{resolved.suffix}'")
    seen: dict[str, str] = {}

    def parse(location: str, item) -> dict:
        problem = _problem(item)
        if problem["task_id"] in seen:
            raise ValueError(f"duplicate task_id {problem['task_id']!r} (first at {seen[problem['task_id']]})")
        seen[problem["task_id"]] = location
        return problem

    return collect(read_jsonl(resolved, where), parse, where)


def _problem(item: Any) -> dict:
    if isinstance(item, Exception):
        raise ValueError(str(item))
    if not isinstance(item, dict):
        raise ValueError(f"expected a JSON object, got {type(item).__name__}")
    missing = [k for k in ("task_id", "prompt", "test") if item.get(k) is None]
    if missing:
        raise ValueError(f"missing {', '.join(map(repr, missing))} (found: {', '.join(item) or 'none'})")
    task_id = item["task_id"]
    if isinstance(task_id, bool) or not isinstance(task_id, (str, int)) or not str(task_id).strip():
        raise ValueError("'task_id' must be a non-empty string")
    for key in ("prompt", "test", "entry_point", "canonical_solution"):
        if key in item and item[key] is not None and not isinstance(item[key], str):
            raise ValueError(f"'{key}' must be a string, got {type(item[key]).__name__}")
    if not item["test"].strip():
        raise ValueError("'test' is empty")
    entry_point = item.get("entry_point")
    if entry_point is not None and not entry_point.isidentifier():
        raise ValueError(f"'entry_point' must be a Python name, got {entry_point!r}")
    return {**item, "task_id": str(task_id)}


def program_for(problem: Mapping[str, Any], completion: str) -> str:
    """The prompt followed by the completion (or the completion alone if it repeats the prompt)."""
    prompt = problem.get("prompt", "")
    return completion if prompt and completion.startswith(prompt) else prompt + completion


def tests_for(problem: Mapping[str, Any]) -> str:
    entry_point = problem.get("entry_point")
    return problem["test"] + (f"\n\ncheck({entry_point})\n" if entry_point else "")


def evaluate(problems: Sequence[Mapping[str, Any]],
             completions_per_problem: Sequence[Sequence[str]] | Mapping[str, Sequence[str]],
             k_values: Sequence[int] = (1, 5), timeout_s: float = 5.0, memory_mb: int = 512,
             workers: int | None = None) -> dict:
    """pass@k averaged over problems, for each k not above the fewest completions any problem has.

    completions_per_problem: a list aligned with problems, or {task_id: [completion, ...]}.
    Returns {"pass@k": float for each k reported, code_n_problems, code_n_samples, code_status_counts,
    code_skipped_k (k values above the fewest samples), per_problem: [{task_id, n, c, statuses}]}."""
    if isinstance(completions_per_problem, Mapping):
        missing = [p["task_id"] for p in problems if p["task_id"] not in completions_per_problem]
        if missing:
            raise ValueError(f"no completions for {', '.join(missing[:5])}")
        completions = [list(completions_per_problem[p["task_id"]]) for p in problems]
    else:
        completions = [list(c) for c in completions_per_problem]
    if len(completions) != len(problems):
        raise ValueError(f"{len(problems)} problems but completions for {len(completions)}")
    if not problems or any(not c for c in completions):
        raise ValueError("evaluate needs at least one problem and one completion per problem")
    jobs = [(i, program_for(problem, completion), tests_for(problem))
            for i, (problem, samples) in enumerate(zip(problems, completions)) for completion in samples]
    workers = workers or max(1, min(len(jobs), os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=workers) as pool:  # each job waits on its own subprocess
        outcomes = list(pool.map(lambda job: run_candidate(job[1], job[2], timeout_s, memory_mb), jobs))
    per_problem = [{"task_id": p["task_id"], "n": 0, "c": 0, "statuses": []} for p in problems]
    counts = {status: 0 for status in STATUSES}
    for (index, _, _), outcome in zip(jobs, outcomes):
        entry = per_problem[index]
        entry["n"] += 1
        entry["c"] += outcome["passed"]
        entry["statuses"].append(outcome["status"])
        counts[outcome["status"]] += 1
    fewest = min(entry["n"] for entry in per_problem)
    report: dict[str, Any] = {}
    for k in k_values:
        if k <= fewest:
            report[f"pass@{k}"] = float(np.mean([pass_at_k(e["n"], e["c"], k) for e in per_problem]))
    report.update({"code_n_problems": len(problems), "code_n_samples": len(jobs), "code_status_counts": counts,
                   "code_skipped_k": [k for k in k_values if k > fewest], "per_problem": per_problem})
    return report
