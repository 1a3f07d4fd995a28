"""Tool calling in an agent loop (calculator, weather, knowledge): tool choice, arguments, final answer."""
from __future__ import annotations

import json

from pipeline.errors import ConfigError
from pipeline.evaluation.common import limited, prompt_tokenizer
from pipeline.evaluation.registry import EvalRun, task
from pipeline.evaluation.scoring.tool_agent import backend_generate, evaluate_tools, load_tool_cases


def check(cfg, where: str) -> None:
    if not cfg.tools_path:
        raise ConfigError(f"{where}.tools_path: task 'tools' needs a file; set {where}.tools_path=PATH")
    load_tool_cases(cfg.tools_path)


@task("tools", order=40, headlines=("tools_call_match", "tools_answer_accuracy"), budget=128, check=check)
def run(ev: EvalRun) -> dict:
    """Cases {prompt, tool, arguments, answer} from tools_path; tools_episodes.jsonl keeps each episode."""
    cfg, ctx = ev.cfg, ev.ctx
    records = limited(load_tool_cases(cfg.tools_path), cfg.limit)
    tokenizer = prompt_tokenizer(ev.backend, ctx)
    metrics, episodes = evaluate_tools(backend_generate(ev.backend, tokenizer, cfg.budget("tools")), records,
                                       cfg.tools_max_turns)
    with open(ctx.out_dir / "tools_episodes.jsonl", "w") as handle:
        handle.writelines(json.dumps({k: e.get(k) for k in ("calls", "final_answer", "error", "turns")},
                                     ensure_ascii=False, default=str) + "\n" for e in episodes)
    return metrics
