"""Evaluation: held-out arithmetic accuracy (batched greedy generation, answer extraction,
exact match) and perplexity on held-out text, for the base model or any trained artifact.

    python main.py recipe=quickstart stages.eval_tuned.limit=50
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional

from omegaconf import MISSING

from ..artifacts import Artifact
from ..context import Inputs, StageContext
from ..data import DatasetSpec, load
from ..errors import ConfigError
from ..judge import JudgeConfig
from ..metrics import extract_answer, perplexity
from ..registry import stage

TASKS = ("math", "perplexity", "speed", "instruct", "judge", "tools", "mcq", "code", "reasoning", "lm_eval")
# Tasks that generate open answers, each with its own budget (reasoning and judge read math's and instruct's).
GENERATING = ("math", "instruct", "tools", "code")
DEFAULT_BUDGETS = {"math": 256, "instruct": 256, "tools": 128, "code": 256}
# Below this share of answers ending at an end-of-generation token, most answers were cut by the budget.
EOS_WARNING_SHARE = 0.5
# Each task's headline metrics: the results table and report.md show them wherever a stage has them
# (lm_eval's are named per harness task, lmeval_*, and all shown).
TASK_HEADLINES = {
    "math": ("math_accuracy", "stopped_at_eos"),
    "perplexity": ("perplexity",),
    "speed": ("first_token_s", "decode_tokens_per_s"),
    "instruct": ("instruct_pass_rate",),
    "judge": ("judge_score",),
    "tools": ("tools_call_match", "tools_answer_accuracy"),
    "mcq": ("mcq_accuracy",),
    "code": ("code_pass@1",),
    "reasoning": ("reasoning_has_think",),
    "lm_eval": (),
}


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
    limit: Optional[int] = None                 # evaluate the first N records of each task
    batch_size: int = 32                        # prompts per generate call
    max_new_tokens: Dict[str, int] = field(default_factory=lambda: dict(DEFAULT_BUDGETS))  # budget per task
    dtype: Optional[str] = None                 # null: the model config's dtype
    compare_with: Optional[str] = None          # an earlier eval stage: the report shows the deltas
    speed_new_tokens: int = 64                  # speed: tokens generated in each streamed, timed generation
    speed_prompt_tokens: int = 512              # speed: prompt length (worked examples before the question)
    speed_repeats: int = 3                      # speed: timed generations; the median is reported
    perplexity_max_length: int = 1024           # perplexity: window length (capped at the model's context)
    perplexity_stride: int = 512                # perplexity: window step; each token is scored once
    tools_path: Optional[str] = None            # tools: cases {prompt, tool, arguments, answer} for the agent loop
    tools_max_turns: int = 3
    mcq_path: Optional[str] = None              # mcq: MMLU / C-Eval style file (question, A, B, C, D, answer)
    mcq_style: str = "letter"                   # letter: score " A".." D"; text: score the option texts per token
    code_path: Optional[str] = None             # code: HumanEval-like problems {task_id, prompt, test}
    code_timeout_s: float = 5.0
    lm_eval_tasks: List[str] = field(default_factory=list)  # lm_eval: lm-evaluation-harness task names
    lm_eval_num_fewshot: Optional[int] = None

    def validate(self, where: str, earlier: dict) -> None:
        unknown = [t for t in self.tasks if t not in TASKS]
        if unknown:
            raise ConfigError(f"{where}.tasks: unknown task(s) {unknown}; valid: {', '.join(TASKS)}")
        for task, budget in self.max_new_tokens.items():
            if task not in GENERATING:
                raise ConfigError(f"{where}.max_new_tokens.{task}: not a generating task; budgets are per task: "
                                  f"{', '.join(GENERATING)}")
            if budget < 1:
                raise ConfigError(f"{where}.max_new_tokens.{task}: {budget}; must be >= 1")
        for key in ("speed_new_tokens", "speed_prompt_tokens", "speed_repeats", "perplexity_max_length",
                    "perplexity_stride", "batch_size"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{where}.{key}: {getattr(self, key)}; must be >= 1")
        self._check_task_files(where)
        if self.judge_stage is not None:
            judge = earlier.get(self.judge_stage)
            if judge is None or judge.output_kind != "gguf" or self.judge_stage not in (self.inputs or [])[1:]:
                ggufs = [n for n, st in earlier.items() if st.output_kind == "gguf"]
                raise ConfigError(f"{where}.judge_stage: '{self.judge_stage}' must be an earlier gguf stage "
                                  f"(choose from: {', '.join(ggufs) or '(none)'}) listed after the evaluated model in "
                                  f"{where}.inputs, e.g. inputs: [<model>, {self.judge_stage}]")
        elif "judge" in self.tasks:  # the endpoint must be known before anything runs
            from ..judge import check_config

            check_config(self.judge, f"{where}.judge")
        if self.compare_with is not None:
            other = earlier.get(self.compare_with)
            if other is None or other.kind != "eval":
                evals = [n for n, s in earlier.items() if s.kind == "eval"]
                raise ConfigError(f"{where}.compare_with: '{self.compare_with}' is not an earlier eval stage; "
                                  f"choose from: {', '.join(evals) or '(none)'}")

    def _check_task_files(self, where: str) -> None:
        """Each file-based task's file, record by record, at plan time (errors name path:line)."""
        from ..agent import load_tool_cases
        from ..codeexec import load_code_problems
        from ..mcq import load_mcq

        for task, key, loader in (("tools", "tools_path", load_tool_cases), ("mcq", "mcq_path", load_mcq),
                                  ("code", "code_path", load_code_problems)):
            if task in self.tasks:
                if not getattr(self, key):
                    raise ConfigError(f"{where}.{key}: task '{task}' needs a file; set {where}.{key}=PATH")
                loader(getattr(self, key))
        if "lm_eval" in self.tasks:
            from ..lmeval import check_available

            check_available(where, self.lm_eval_tasks)
        if self.mcq_style not in ("letter", "text"):
            raise ConfigError(f"{where}.mcq_style: '{self.mcq_style}'; valid: letter, text")

    def unused_datasets(self) -> set[str]:
        """Data the chosen tasks never read: not checked at plan time, not in the fingerprint."""
        uses = {"math": {"math", "reasoning", "speed"}, "text": {"perplexity"}, "instruct": {"instruct", "judge"}}
        return {name for name, tasks in uses.items() if not tasks & set(self.tasks)}

    def memory_profile(self):
        from ..memory import Workload

        budgets = [self.budget(t) for t in GENERATING if t in self.tasks or (t == "math" and "reasoning" in self.tasks)]
        return Workload(kind="generate", batch=self.batch_size, new_tokens=max(budgets, default=1),
                        scores_window=self.perplexity_max_length if "perplexity" in self.tasks else 0)

    def budget(self, task: str) -> int:
        return self.max_new_tokens.get(task, DEFAULT_BUDGETS[task])


@stage("eval", config=EvalConfig, consumes={"model", "adapter", "gguf"}, produces="eval")
def run(cfg: EvalConfig, inputs: Inputs, ctx: StageContext) -> Artifact:
    """Score the input (HF model, adapter, bnb/GPTQ checkpoint or GGUF); results.json, predictions.jsonl."""
    from ..backends import open_backend, size_on_disk

    source = inputs.primary
    started = time.time()
    memory = MemoryWatch(ctx.device)
    backend = open_backend(source, ctx, cfg.dtype, cfg.batch_size)
    metrics = {"backend": backend.name, "load_seconds": backend.load_seconds,
               "size_mb": round(size_on_disk(source) / 2**20, 3)}
    if "speed" in cfg.tasks:
        metrics.update(_speed(cfg, backend, ctx))
    if "math" in cfg.tasks or "reasoning" in cfg.tasks:
        metrics.update(_math(cfg, backend, ctx))
    if "instruct" in cfg.tasks or "judge" in cfg.tasks:
        metrics.update(_instruct(cfg, backend, ctx))
    if "tools" in cfg.tasks:
        metrics.update(_tools(cfg, backend, ctx))
    if "mcq" in cfg.tasks:
        metrics.update(_mcq(cfg, backend, ctx))
    if "code" in cfg.tasks:
        metrics.update(_code(cfg, backend, ctx))
    if "perplexity" in cfg.tasks:
        metrics.update(_perplexity(cfg, backend, ctx))
    if "lm_eval" in cfg.tasks:
        from .. import lmeval
        from ..models import torch_dtype

        dtype = str(torch_dtype(cfg.dtype or ctx.model.dtype, ctx.device, ctx.model.path)).replace("torch.", "")
        metrics.update(lmeval.run(source, cfg.lm_eval_tasks, ctx.device, dtype, cfg.batch_size,
                                  cfg.lm_eval_num_fewshot, cfg.limit))
    metrics.update(memory.result())
    backend.close()
    metrics["seconds"] = round(time.time() - started, 2)
    (ctx.out_dir / "results.json").write_text(json.dumps(metrics, indent=2) + "\n")
    shown = {m for task in cfg.tasks for m in TASK_HEADLINES[task]}
    summary = ", ".join(f"{k} {v}" for k, v in metrics.items() if k in shown)
    ctx.log(f"{summary} ({backend.name})")
    ctx.tracker.log(ctx.name, {k: v for k, v in metrics.items() if isinstance(v, (int, float))})
    return Artifact(kind="eval", path=str(ctx.out_dir), fingerprint="", format="eval-report",
                    base_model=source.base_model, metrics=metrics, meta={"evaluated": source.path})


def _limited(records: list, limit: int | None) -> list:
    return records[:limit] if limit else records


def _math(cfg: EvalConfig, backend, ctx: StageContext) -> dict:
    from ..backends import chat_prompt

    records = _limited(load(cfg.math, "gsm8k"), cfg.limit)
    tokenizer = _prompt_tokenizer(backend, ctx)
    started = time.time()
    budget = cfg.budget("math")
    outputs = backend.generate([chat_prompt(tokenizer, r["question"]) for r in records], budget,
                               progress=f"[{ctx.name}] math")
    seconds = time.time() - started
    correct = 0
    with open(ctx.out_dir / "predictions.jsonl", "w") as handle:
        for record, output in zip(records, outputs):
            predicted = extract_answer(output.text)
            ok = predicted == record["target"]
            correct += ok
            handle.write(json.dumps({"question": record["question"], "target": record["target"], "output": output.text,
                                     "predicted": predicted, "correct": ok, "stopped": output.stopped},
                                    ensure_ascii=False) + "\n")
    extra = {}
    if "reasoning" in cfg.tasks:  # features of the same answers: think blocks, self-checks, backtracking
        from ..reasoning import summarise

        extra = summarise([o.text for o in outputs])
    stopped = sum(o.stopped for o in outputs) / len(records)
    warn_if_cut(ctx, "math", stopped, budget)
    return {**extra, "math_accuracy": round(correct / len(records), 4), "math_correct": correct, "math_n": len(records),
            "prompts_per_s": round(len(records) / seconds, 2), "stopped_at_eos": round(stopped, 4),
            "math_max_new_tokens": budget}


def warn_if_cut(ctx: StageContext, task: str, stopped: float, budget: int) -> None:
    """Most answers ending at the budget means the score measures the budget, not the model."""
    if stopped < EOS_WARNING_SHARE:
        ctx.log(f"warning: only {stopped:.0%} of the {task} answers ended at an end-of-generation token; the rest hit "
                f"the {budget}-token budget (raise stages.{ctx.name}.max_new_tokens.{task})")


def _instruct(cfg: EvalConfig, backend, ctx: StageContext) -> dict:
    """Instruction following with verifiable checks, overlap with the reference answers (BLEU, chrF,
    ROUGE, METEOR), and with task judge the LLM judge's 1-10 grades of the same answers."""
    from ..backends import chat_prompt
    from ..checks import check

    records = _limited(load(cfg.instruct, "instruct"), cfg.limit)
    tokenizer = _prompt_tokenizer(backend, ctx)
    generations = backend.generate([chat_prompt(tokenizer, r["prompt"]) for r in records], cfg.budget("instruct"),
                                   progress=f"[{ctx.name}] instruct")
    outputs = [o.text.strip() for o in generations]
    stopped = sum(o.stopped for o in generations) / len(records)
    warn_if_cut(ctx, "instruct", stopped, cfg.budget("instruct"))
    passed = [check(o, r["check"]) for r, o in zip(records, outputs)]
    metrics: dict = {"instruct_pass_rate": round(sum(passed) / len(records), 4), "instruct_n": len(records),
                     "instruct_stopped_at_eos": round(stopped, 4)}
    with_reference = [(o, r["reference"]) for r, o in zip(records, outputs) if r.get("reference")]
    if with_reference:
        from ..textmetrics import score_generation

        scores = score_generation([o for o, _ in with_reference], [ref for _, ref in with_reference])
        metrics.update({f"gen_{k}": v for k, v in scores.items()
                        if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "n"})
    with open(ctx.out_dir / "instruct_predictions.jsonl", "w") as handle:
        handle.writelines(json.dumps({"prompt": r["prompt"], "check": r["check"], "output": o, "passed": ok},
                                     ensure_ascii=False) + "\n" for r, o, ok in zip(records, outputs, passed))
    if "judge" in cfg.tasks:
        from ..judge import grade

        items = [{"question": r["prompt"], "answer": o, "reference": r.get("reference") or None}
                 for r, o in zip(records, outputs)]
        if cfg.judge_stage:
            verdicts = _grade_with_stage(cfg, items, ctx)
        else:
            verdicts = grade(cfg.judge, items)
        verdicts.write_jsonl(ctx.out_dir / "judge.jsonl", items)
        summary = verdicts.summary()
        metrics.update({"judge_score": summary["mean_score"], "judge_parsed": summary["n_parsed"],
                        "judge_unparsable": summary["n_unparsable"], "judge_failed": summary["n_failed"],
                        "judge_distribution": summary["distribution"]})
        ctx.log(f"judge: {summary['n_parsed']} graded (mean {summary['mean_score']}), {summary['n_unparsable']} "
                f"unparsable, {summary['n_failed']} failed requests")
    return metrics


def _grade_with_stage(cfg: EvalConfig, items: list[dict], ctx: StageContext):
    """Serve the chain's judge GGUF on loopback with a one-off key, grade, stop the server."""
    import dataclasses
    import os
    import secrets

    from .. import serving
    from ..backends import gguf_file
    from ..judge import grade

    judge = ctx.chain[cfg.judge_stage]
    key = secrets.token_urlsafe(16)
    port = serving.free_port("127.0.0.1")
    command = serving.llama_cpp_command(gguf_file(judge), "127.0.0.1", port, 4096, "judge", os.cpu_count() or 1, [],
                                        ctx.device)
    server = serving.start(command, serving.server_env("llama.cpp", key, "127.0.0.1", port),
                           ctx.out_dir / "judge_server.log", "127.0.0.1", port)
    variable = "TUNECHAIN_STAGE_JUDGE_KEY"
    try:
        serving.wait_ready(server, key, 120)
        os.environ[variable] = key
        local = dataclasses.replace(cfg.judge, base_url=f"http://127.0.0.1:{port}/v1", api_key_env=variable,
                                    model="judge")
        return grade(local, items)
    finally:
        os.environ.pop(variable, None)
        serving.stop(server)


def _tools(cfg: EvalConfig, backend, ctx: StageContext) -> dict:
    """Tool calling in an agent loop (calculator / weather / knowledge): tool choice, arguments, final answer."""
    from ..agent import backend_generate, evaluate_tools, load_tool_cases

    records = _limited(load_tool_cases(cfg.tools_path), cfg.limit)
    tokenizer = _prompt_tokenizer(backend, ctx)
    metrics, episodes = evaluate_tools(backend_generate(backend, tokenizer, cfg.budget("tools")), records,
                                       cfg.tools_max_turns)
    with open(ctx.out_dir / "tools_episodes.jsonl", "w") as handle:
        handle.writelines(json.dumps({k: e.get(k) for k in ("calls", "final_answer", "error", "turns")},
                                     ensure_ascii=False, default=str) + "\n" for e in episodes)
    return metrics


def _mcq(cfg: EvalConfig, backend, ctx: StageContext) -> dict:
    """Multiple choice by log-likelihood of each option (needs logits: the transformers backend)."""
    from ..mcq import load_mcq, score_mcq

    if not hasattr(backend, "model"):
        ctx.log(f"mcq: skipped, the {backend.name} backend gives no per-token log-likelihoods here")
        return {"mcq_skipped": f"{backend.name} backend"}
    records = _limited(load_mcq(cfg.mcq_path), cfg.limit)
    result = score_mcq(backend.model, backend.tokenizer, records, ctx.device, cfg.batch_size, cfg.mcq_style)
    with open(ctx.out_dir / "mcq_predictions.jsonl", "w") as handle:
        handle.writelines(json.dumps(p, ensure_ascii=False) + "\n" for p in result.pop("predictions"))
    return result


def _code(cfg: EvalConfig, backend, ctx: StageContext) -> dict:
    """pass@1 of greedy completions, each run with its tests in a limited subprocess."""
    from ..codeexec import evaluate, load_code_problems

    problems = _limited(load_code_problems(cfg.code_path), cfg.limit)
    completions = backend.generate([p["prompt"] for p in problems], cfg.budget("code"), progress=f"[{ctx.name}] code")
    result = evaluate(problems, [[c.text] for c in completions], k_values=(1,), timeout_s=cfg.code_timeout_s)
    with open(ctx.out_dir / "code_results.jsonl", "w") as handle:
        handle.writelines(json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in result.pop("per_problem", []))
    return {(f"code_{k}" if k.startswith("pass@") else k): v for k, v in result.items()}


def _speed(cfg: EvalConfig, backend, ctx: StageContext) -> dict:
    """First-token latency and decode rate, each the median of `speed_repeats` streamed generations (after one
    warm-up) of a prompt about `speed_prompt_tokens` long: worked examples, then a question."""
    import statistics

    tokenizer = _prompt_tokenizer(backend, ctx)
    room = backend.context_length - cfg.speed_new_tokens - 8 if backend.context_length else cfg.speed_prompt_tokens
    prompt, prompt_tokens = speed_prompt(tokenizer, load(cfg.math, "gsm8k"), min(cfg.speed_prompt_tokens, room))
    backend.timed(prompt, 2)  # warm-up: first-call allocations are not latency
    runs = [backend.timed(prompt, cfg.speed_new_tokens) for _ in range(cfg.speed_repeats)]
    return {"first_token_s": round(statistics.median(r.first_token_s for r in runs), 4),
            "decode_tokens_per_s": round(statistics.median(r.decode_tokens_per_s for r in runs), 2),
            "speed_new_tokens": runs[0].new_tokens, "speed_prompt_tokens": prompt_tokens,
            "speed_repeats": len(runs)}


def speed_prompt(tokenizer, records: list[dict], target_tokens: int) -> tuple[str, int]:
    """A chat prompt of about `target_tokens` tokens: solved problems as earlier turns, then one question."""
    from ..backends import chat_prompt

    question, solved = records[0]["question"], records[1:]
    messages: list[dict] = []
    for record in solved:
        candidate = messages + [{"role": "user", "content": record["question"]},
                                {"role": "assistant", "content": record["answer"]}]
        text = tokenizer.apply_chat_template(candidate + [{"role": "user", "content": question}], tokenize=False,
                                             add_generation_prompt=True)
        if len(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]) > target_tokens:
            break
        messages = candidate
    prompt = tokenizer.apply_chat_template(messages + [{"role": "user", "content": question}], tokenize=False,
                                           add_generation_prompt=True) if messages else chat_prompt(tokenizer, question)
    return prompt, len(tokenizer(prompt, add_special_tokens=False)["input_ids"])


class MemoryWatch:
    """Memory the evaluated model takes: the CUDA allocator's peak, or on CPU the process's peak RSS during this
    eval (Linux VmHWM, reset by the runner at the stage's start) above its RSS before the model was loaded."""

    def __init__(self, device: str):
        from ..memory import vm_status

        self.device = device
        self.before = vm_status("VmRSS") or 0
        if device == "cuda":
            import torch

            torch.cuda.reset_peak_memory_stats()

    def result(self) -> dict:
        if self.device == "cuda":
            import torch

            return {"memory_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1), "memory_of": "cuda_max_allocated"}
        from ..memory import PeakMemory

        peak = PeakMemory(self.device).peak_rss()
        return {"memory_mb": round((peak - self.before) / 2**20, 1), "memory_of": "peak_rss_growth"}


def _prompt_tokenizer(backend, ctx: StageContext):
    """The tokenizer that renders chat prompts: the backend's own, or for a GGUF (which carries its template
    inside the file) the chain's base tokenizer, so every backend sees the same prompt text."""
    from ..models import load_tokenizer

    if getattr(backend, "tokenizer", None) is not None:
        return backend.tokenizer
    return load_tokenizer(ctx.chain["base"].path if "base" in ctx.chain else ctx.model.path, ctx.model)


def _perplexity(cfg: EvalConfig, backend, ctx: StageContext) -> dict:
    texts = [r["text"] for r in _limited(load(cfg.text, "text"), cfg.limit)]
    total_nll, n_tokens = backend.nll(texts, cfg.perplexity_max_length, cfg.perplexity_stride,
                                      progress=f"[{ctx.name}] perplexity")
    return {"perplexity": round(perplexity(total_nll, n_tokens), 4), "perplexity_tokens": n_tokens}
