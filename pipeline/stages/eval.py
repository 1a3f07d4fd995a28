"""The eval stage: scores its input (HF model, adapter, bnb/GPTQ checkpoint or GGUF) on the tasks
a config names, each a file in pipeline/evaluation/tasks/ (math, perplexity, speed, instruct,
judge, tools, mcq, code, reasoning, lm_eval).

    python main.py recipe=quickstart stages.eval_tuned.limit=50
    python main.py stages.eval_tuned.tasks=[math,speed,instruct]
    python main.py stages.eval_tuned.tasks=[speed] stages.eval_tuned.settings.speed.new_tokens=128

What every task uses stays here (the data, limit, batch size, budgets, dtype, the judge); what one task
uses is declared in that task's file and lives under `settings.<task>` (pipeline/evaluation/registry.py).
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Dict, List, Optional

from omegaconf import MISSING

from pipeline.artifact import Artifact
from pipeline.backends.open import open_backend
from pipeline.data.datasets import DatasetSpec
from pipeline.engine.context import Inputs, StageContext
from pipeline.engine.registry import stage
from pipeline.errors import ConfigError, PlanError
from pipeline.evaluation import registry as eval_tasks
from pipeline.evaluation.scoring.judge import JudgeConfig
from pipeline.models.memory import Workload
from pipeline.models.vision import folder_is_vision
from pipeline.models.peak_memory import MemoryWatch
from pipeline.ranges import at_least, setting
from pipeline.engine.contract import StageConfig


IMAGE_TASKS = ("vqa", "hallucination")  # they need a vision-language model


@dataclass
class EvalConfig(StageConfig):
    kind: str = setting("eval", "the stage kind")
    tasks: List[str] = setting(factory=lambda: ["math", "perplexity"],
                               help="math | perplexity | speed | instruct | judge | tools | mcq | code | reasoning | "
                                    "lm_eval | vqa | hallucination, or a task of your own (README: eval tasks)")
    math: DatasetSpec = setting(MISSING, "arithmetic problems with a final number (gsm8k)", purpose="gsm8k")
    text: DatasetSpec = setting(MISSING, "held-out documents (task perplexity)", purpose="text")
    instruct: DatasetSpec = setting(MISSING, "prompts with verifiable checks and reference answers (tasks instruct, "
                                             "judge)", purpose="instruct")
    vqa: Optional[DatasetSpec] = setting(None, "questions about images with short answers (task vqa)",
                                         purpose="prompt", images=True)
    pope: Optional[DatasetSpec] = setting(None, "yes/no questions about objects in and not in images (task "
                                                "hallucination)", purpose="prompt", images=True)
    judge: JudgeConfig = setting(factory=JudgeConfig, help="an OpenAI-compatible judge that grades the instruct answers "
                                                           "1-10 (task judge)")
    judge_stage: Optional[str] = setting(None, "an earlier gguf stage as the judge, served on loopback; list it in "
                                               "inputs too, so the judge is part of the fingerprint")
    limit: Optional[int] = at_least(1, MISSING, help="the first N records of each task (null: all)")
    batch_size: int = at_least(1, MISSING, help="prompts per generate call (capped to fit memory)")
    max_new_tokens: Dict[str, int] = at_least(1, None, default_factory=eval_tasks.default_budgets,
                                              help="generation budget per task; answers that hit it are counted "
                                                   "(stopped_at_eos)")
    dtype: Optional[str] = setting(None, "null: the model config's dtype")
    compare_with: Optional[str] = setting(None, "an earlier eval stage: the report shows the deltas")
    settings: eval_tasks.TaskSettings = setting(factory=eval_tasks.default_settings,
                                                help="each task's own settings (settings.speed.new_tokens...), "
                                                     "declared in its file; all typed, checked and fingerprinted")

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

    def check_device(self, where: str, device: str) -> None:
        """Each task's packages, before any answer is generated (a missing one used to fail after them)."""
        for spec in eval_tasks.with_needs(self.tasks):
            missing = eval_tasks.missing_packages(spec)
            if missing:
                raise PlanError(f"{where}.tasks: '{spec.name}' needs {', '.join(missing)}, not installed: "
                                f"pip install -e '.[{spec.extra}]'")

    def check_family(self, where: str, folder) -> None:
        image_tasks = [t for t in self.tasks if t in IMAGE_TASKS]
        if image_tasks and folder is not None and not folder_is_vision(folder):
            raise ConfigError(f"{where}.tasks: {image_tasks} ask questions about images, but {folder} is a text model "
                              f"(no vision_config); use a vision-language model (model=embedded-vlm) or drop them")

    def also_reads(self) -> set[str]:
        return {self.compare_with} if self.compare_with else set()

    def unused_datasets(self) -> set[str]:
        """Data the chosen tasks never read: not checked at plan time, not in the fingerprint."""
        read = {field_name for spec in eval_tasks.with_needs(self.tasks) for field_name in spec.reads}
        return {"math", "text", "instruct", "vqa", "pope"} - read

    def memory_profile(self, sources):
        budgets = [self.budget(s.name) for s in eval_tasks.with_needs(self.tasks) if s.budget is not None]
        source = sources[0] if sources else None  # a GGUF input runs in llama.cpp, not transformers
        return Workload(kind="generate", batch=self.batch_size, new_tokens=max(budgets, default=1),
                        scores_window=self.settings.perplexity.max_length if "perplexity" in self.tasks else 0,
                        gguf=getattr(source.cfg, "quant", "f16") if source and source.output_kind == "gguf" else None)

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
