"""Code generation (HumanEval-like): pass@1 of greedy completions, each run with its tests in a
limited subprocess."""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Optional

from pipeline.errors import ConfigError
from pipeline.evaluation.common import limited
from pipeline.evaluation.registry import EvalRun, task
from pipeline.evaluation.scoring.codeexec import evaluate, load_code_problems
from pipeline.ranges import positive, setting


@dataclass
class CodeSettings:
    path: Optional[str] = setting(None, "HumanEval-like problems {task_id, prompt, test}")
    timeout_s: float = positive(5.0, help="per problem, its tests included")


def check(cfg, where: str) -> None:
    if not cfg.settings.code.path:
        raise ConfigError(f"{where}.settings.code.path: task 'code' needs a file; set {where}.settings.code.path=PATH")
    load_code_problems(cfg.settings.code.path)


@task("code", order=60, headlines=("code_pass@1",), budget=256, check=check, settings=CodeSettings,
      percent=("code_pass@1",))
def run(ev: EvalRun) -> dict:
    """Problems {task_id, prompt, test} from settings.code.path; code_results.jsonl keeps each run."""
    cfg, ctx = ev.cfg, ev.ctx
    problems = limited(load_code_problems(cfg.settings.code.path), cfg.limit)
    completions = ev.backend.generate([p["prompt"] for p in problems], cfg.budget("code"),
                                       progress=f"[{ctx.name}] code")
    result = evaluate(problems, [[c.text] for c in completions], k_values=(1,), timeout_s=cfg.settings.code.timeout_s)
    with open(ctx.out_dir / "code_results.jsonl", "w") as handle:
        handle.writelines(json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in result.pop("per_problem", []))
    return {(f"code_{k}" if k.startswith("pass@") else k): v for k, v in result.items()}
