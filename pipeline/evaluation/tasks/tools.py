"""Tool calling in an agent loop (calculator, weather, knowledge): tool choice, arguments, final answer."""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Optional

from pipeline.errors import ConfigError
from pipeline.evaluation.common import limited, prompt_tokenizer
from pipeline.evaluation.registry import EvalRun, task
from pipeline.evaluation.scoring.tool_agent import (answer_matches, backend_generate, evaluate_tools, first_call_matches,
                                                    load_tool_cases)
from pipeline.ranges import at_least, setting


@dataclass
class ToolsSettings:
    path: Optional[str] = setting("embedded/data/test_tools.jsonl",
                                  "cases {prompt, tool, arguments, answer}: the agent loop")
    max_turns: int = at_least(1, 3, help="model turns per case (tool call, tool result, answer)")


def check(cfg, where: str) -> None:
    if not cfg.settings.tools.path:
        raise ConfigError(f"{where}.settings.tools.path: task 'tools' needs a file; set {where}.settings.tools.path=PATH")
    load_tool_cases(cfg.settings.tools.path)


@task("tools", order=40, headlines=("tools_call_match", "tools_answer_accuracy"), budget=128, check=check,
      settings=ToolsSettings, percent=("tools_call_match", "tools_answer_accuracy"),
      items=("tools_episodes.jsonl", "prompt", "calls", "final_answer", "call_match"))
def run(ev: EvalRun) -> dict:
    """Cases {prompt, tool, arguments, answer} from settings.tools.path; tools_episodes.jsonl keeps each episode."""
    cfg, ctx = ev.cfg, ev.ctx
    records = limited(load_tool_cases(cfg.settings.tools.path), cfg.limit)
    tokenizer = prompt_tokenizer(ev.backend, ctx)
    metrics, episodes = evaluate_tools(backend_generate(ev.backend, tokenizer, cfg.budget("tools")), records,
                                       cfg.settings.tools.max_turns)
    with open(ctx.out_dir / "tools_episodes.jsonl", "w") as handle:
        for record, episode in zip(records, episodes):
            call_match = all(first_call_matches(record, episode))
            answered = None if record.get("answer") is None else answer_matches(
                episode.get("final_answer"), record["answer"], record.get("tool"))
            handle.write(json.dumps({"prompt": record["prompt"], "tool": record["tool"],
                                     "arguments": record["arguments"], "answer": record.get("answer"),
                                     **{k: episode.get(k) for k in ("calls", "final_answer", "error", "turns", "replies")},
                                     "call_match": call_match, "answer_correct": answered},
                                    ensure_ascii=False, default=str) + "\n")
    return metrics
