"""The eval stage: scores its input (HF model, adapter, bnb/GPTQ checkpoint or GGUF) on the tasks
a config names, each a file in pipeline/evaluation/tasks/ (math, perplexity, speed, instruct,
judge, tools, mcq, code, reasoning, lm_eval).

    python main.py recipe=quickstart stages.eval_tuned.limit=50
    python main.py stages.eval_tuned.tasks=[math,speed,instruct]
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional

from omegaconf import MISSING

from pipeline.artifact import Artifact
from pipeline.backends.open import open_backend
from pipeline.data.datasets import DatasetSpec
from pipeline.engine.context import Inputs, StageContext
from pipeline.engine.registry import stage
from pipeline.errors import ConfigError
from pipeline.evaluation import registry as eval_tasks
from pipeline.evaluation.scoring.judge import JudgeConfig
from pipeline.models.peak_memory import MemoryWatch
from pipeline.ranges import at_least, one_of, positive


@dataclass
class EvalConfig:
    kind: str = "eval"
    inputs: Optional[List[str]] = None          # default: the latest earlier model or adapter
    tasks: List[str] = field(default_factory=lambda: ["math", "perplexity"])
    math: DatasetSpec = field(default=MISSING, metadata={"purpose": "gsm8k"})
    text: DatasetSpec = field(default=MISSING, metadata={"purpose": "text"})
    instruct: DatasetSpec = field(default=MISSING, metadata={"purpose": "instruct"})
    judge: JudgeConfig = field(default_factory=JudgeConfig)  # grades the instruct answers (task judge)
    judge_stage: Optional[str] = None           # a GGUF stage of this chain as the judge (served on loopback);
                                                # list it in inputs too, so the judge is part of the fingerprint
    limit: Optional[int] = at_least(1, None)    # evaluate the first N records of each task
    batch_size: int = at_least(1, 32)           # prompts per generate call
    max_new_tokens: Dict[str, int] = at_least(1, None, default_factory=eval_tasks.default_budgets)  # budget per generating task
    dtype: Optional[str] = None                 # null: the model config's dtype
    compare_with: Optional[str] = None          # an earlier eval stage: the report shows the deltas
    speed_new_tokens: int = at_least(1, 64)     # speed: tokens generated in each streamed, timed generation
    speed_prompt_tokens: int = at_least(1, 512)  # speed: prompt length (worked examples before the question)
    speed_repeats: int = at_least(1, 3)         # speed: timed generations; the median is reported
    perplexity_max_length: int = at_least(2, 1024)  # perplexity: window length (capped at the model's context)
    perplexity_stride: int = at_least(1, 512)   # perplexity: window step; each token is scored once
    tools_path: Optional[str] = "embedded/data/test_tools.jsonl"  # tools: cases {prompt, tool, arguments, answer} for the agent loop
    tools_max_turns: int = at_least(1, 3)
    mcq_path: Optional[str] = None              # mcq: MMLU / C-Eval style file (question, A, B, C, D, answer)
    mcq_style: str = one_of("letter", ("letter", "text"))  # letter: score " A".." D"; text: score the option texts per token
    code_path: Optional[str] = None             # code: HumanEval-like problems {task_id, prompt, test}
    code_timeout_s: float = positive(5.0)
    lm_eval_tasks: List[str] = field(default_factory=list)  # lm_eval: lm-evaluation-harness task names
    lm_eval_num_fewshot: Optional[int] = at_least(0, None)

    def validate(self, where: str, earlier: dict) -> None:
        valid = eval_tasks.names()
        unknown = [t for t in self.tasks if t not in valid]
        if unknown:
            raise ConfigError(f"{where}.tasks: unknown task(s) {unknown}; valid: {', '.join(valid)}")
        budgets = eval_tasks.default_budgets()
        for task, budget in self.max_new_tokens.items():
            if task not in budgets:
                raise ConfigError(f"{where}.max_new_tokens.{task}: not a generating task; budgets are per task: "
                                  f"{', '.join(budgets)}")
            if budget < 1:
                raise ConfigError(f"{where}.max_new_tokens.{task}: {budget}; must be >= 1")
        for key in ("speed_new_tokens", "speed_prompt_tokens", "speed_repeats", "perplexity_max_length",
                    "perplexity_stride", "batch_size"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{where}.{key}: {getattr(self, key)}; must be >= 1")
        if self.mcq_style not in ("letter", "text"):
            raise ConfigError(f"{where}.mcq_style: '{self.mcq_style}'; valid: letter, text")
        if self.judge_stage is not None:
            judge = earlier.get(self.judge_stage)
            if judge is None or judge.output_kind != "gguf" or self.judge_stage not in (self.inputs or [])[1:]:
                ggufs = [n for n, st in earlier.items() if st.output_kind == "gguf"]
                raise ConfigError(f"{where}.judge_stage: '{self.judge_stage}' must be an earlier gguf stage "
                                  f"(choose from: {', '.join(ggufs) or '(none)'}) listed after the evaluated model in "
                                  f"{where}.inputs, e.g. inputs: [<model>, {self.judge_stage}]")
        for spec in eval_tasks.with_needs(self.tasks):  # each task's own files, record by record (errors name path:line)
            if spec.check is not None:
                spec.check(self, where)
        if self.compare_with is not None:
            other = earlier.get(self.compare_with)
            if other is None or other.kind != "eval":
                evals = [n for n, s in earlier.items() if s.kind == "eval"]
                raise ConfigError(f"{where}.compare_with: '{self.compare_with}' is not an earlier eval stage; "
                                  f"choose from: {', '.join(evals) or '(none)'}")

    def unused_datasets(self) -> set[str]:
        """Data the chosen tasks never read: not checked at plan time, not in the fingerprint."""
        read = {field_name for spec in eval_tasks.with_needs(self.tasks) for field_name in spec.reads}
        return {"math", "text", "instruct"} - read

    def memory_profile(self):
        from pipeline.models.memory import Workload

        budgets = [self.budget(s.name) for s in eval_tasks.with_needs(self.tasks) if s.budget is not None]
        return Workload(kind="generate", batch=self.batch_size, new_tokens=max(budgets, default=1),
                        scores_window=self.perplexity_max_length if "perplexity" in self.tasks else 0)

    def budget(self, task: str) -> int:
        return self.max_new_tokens.get(task, eval_tasks.default_budgets()[task])


@stage("eval", config=EvalConfig, consumes={"model", "adapter", "gguf"}, produces="eval",
       libraries=("torch", "transformers", "peft", "llama-cpp-python"), isolated=True)
def run(cfg: EvalConfig, inputs: Inputs, ctx: StageContext) -> Artifact:
    """Score the input (HF model, adapter, bnb/GPTQ checkpoint or GGUF); results.json, predictions.jsonl."""
    source = inputs.primary
    started = time.time()
    memory = MemoryWatch(ctx.device)
    backend = open_backend(source, ctx, cfg.dtype, cfg.batch_size)
    metrics = {"backend": backend.name, "load_seconds": backend.load_seconds,
               "size_mb": round(source.size_on_disk() / 2**20, 3)}
    shared = eval_tasks.EvalRun(cfg, backend, ctx, source)
    for spec in eval_tasks.with_needs(cfg.tasks):
        metrics.update(spec.run(shared))
    metrics.update(memory.result())
    backend.close()
    metrics["seconds"] = round(time.time() - started, 2)
    (ctx.out_dir / "results.json").write_text(json.dumps(metrics, indent=2) + "\n")
    headlines = eval_tasks.headlines()
    shown = {m for task in cfg.tasks for m in headlines[task]}
    summary = ", ".join(f"{k} {v}" for k, v in metrics.items() if k in shown)
    ctx.log(f"{summary} ({backend.name})")
    ctx.tracker.log(ctx.name, {k: v for k, v in metrics.items() if isinstance(v, (int, float))})
    return Artifact(kind="eval", path=str(ctx.out_dir), fingerprint="", format="eval-report",
                    base_model=source.base_model, metrics=metrics, meta={"evaluated": source.path})
