"""Run a chain: plan it, then run or reuse each stage in order, recording everything.

The run folder (Hydra's output dir) gets `chain.json` (rewritten after every stage, so a crash
leaves an honest record), `metrics.jsonl`, the W&B run files and `report.md`. A SIGTERM or Ctrl-C ends
the chain as `interrupted`, naming the stage (pipeline/stopping.py).
"""
from __future__ import annotations

import datetime as dt
import importlib.metadata
import os
import random
import signal
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from pipeline.artifact import MANIFEST, Artifact, write_json_atomic
from pipeline import stopping
from pipeline.cards import model_card
from pipeline.engine import launch, plugins, pruning, report
from pipeline.engine.context import Inputs, StageContext
from pipeline.engine.explain import explain
from pipeline.engine.plan import BASE, Plan, Step, build_plan, dataset_fields, memory_warnings
from pipeline.engine.store import Store
from pipeline.engine.tracking import LoggerConfig, Tracker
from pipeline.engine.typed_config import typed_config
from pipeline.errors import ConfigError, PlanError
from pipeline.redaction import redact, redact_overrides, remember_named_variables
from pipeline.models.loading import is_vision
from pipeline.models.peak_memory import PeakMemory, peak_metrics
from pipeline.training.checkpoints import latest

VERSIONED = ("tunechain", "torch", "transformers", "peft", "trl", "accelerate", "datasets", "bitsandbytes",
             "gptqmodel", "llama-cpp-python", "vllm")


def tool_versions() -> dict[str, str]:
    versions = {}
    for name in VERSIONED:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return versions


class ChainRecord:
    """chain.json: per stage its name, kind, status, artifact, fingerprint, metrics and time."""

    def __init__(self, run_dir: Path, plan: Plan, overrides: list[str]):
        self.path = run_dir / "chain.json"
        self.data: dict[str, Any] = {
            "recipe": plan.recipe, "model": plan.model.name, "model_path": plan.model.path,
            "model_source": plan.model.source,
            "overrides": redact_overrides(overrides), "store": str(plan.store.root), "status": "running", "skipped": plan.skipped,
            "started": dt.datetime.now().isoformat(timespec="seconds"),
            "stages": [{"name": s.name, "kind": s.kind, "output": s.output_kind, "inputs": s.input_names, "status": "pending",
                        "fingerprint": s.fingerprint, "fingerprint_inputs": s.fingerprint_inputs, "artifact": None,
                        "metrics": {},
                        "compare_with": getattr(s.cfg, "compare_with", None)} for s in plan.steps],
        }
        self.save()

    def entry(self, name: str) -> dict[str, Any]:
        return next(e for e in self.data["stages"] if e["name"] == name)

    def update(self, name: str, **fields: Any) -> None:
        self.entry(name).update(fields)
        self.save()

    def finish(self, status: str) -> None:
        self.data["status"] = status
        for entry in self.data["stages"]:
            if entry["status"] == "running":
                entry["status"] = "failed"
        # the process's peak over the stages it ran (each stage resets Linux's peak counter, so a whole-process
        # figure such as /usr/bin/time's maximum RSS shows only the last stage's)
        peaks = [e["metrics"].get("peak_rss_mb") for e in self.data["stages"] if e["status"] == "done"]
        self.data["peak_rss_mb"] = max([p for p in peaks if p] or [None], key=lambda p: p or 0)
        self.data["finished"] = dt.datetime.now().isoformat(timespec="seconds")
        self.save()

    def save(self) -> None:
        write_json_atomic(self.path, self.data)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    os.environ["PYTHONHASHSEED"] = str(seed)
    import numpy as np
    import torch

    np.random.seed(seed)
    torch.manual_seed(seed)


def run_stage(step: Step, inputs: Inputs, ctx: StageContext, store: Store,
              chain_data: dict[str, Any] | None = None) -> tuple[Artifact, str]:
    """Run one stage into a temporary folder and commit it, or reuse the stored artifact. `chain_data` (the
    run's chain.json as the runner holds it) feeds the model card of a carded artifact; without it, no card."""
    if not step.spec.cache:  # e.g. serve: runs every time, its record stays in the run folder
        ctx.out_dir = ctx.run_dir / step.name
        ctx.out_dir.mkdir(parents=True, exist_ok=True)
        artifact = _measured_run(step, inputs, ctx)
        _stamp(artifact, step, inputs, vision=is_vision(ctx.model))
        artifact.path = str(ctx.out_dir)
        write_json_atomic(ctx.out_dir / MANIFEST, artifact.to_json())
        return artifact, "done"
    with store.lock(step.fingerprint):
        found = store.find(step.output_kind, step.fingerprint)  # another job may have made it meanwhile
        if found is not None:
            return found, "reused"
        ctx.out_dir = store.new_tmp_dir(step.fingerprint)
        seed_everything(ctx.seed)
        artifact = _measured_run(step, inputs, ctx)
        _stamp(artifact, step, inputs, vision=is_vision(ctx.model))
        if artifact.kind in model_card.CARDED and chain_data is not None:
            _write_card(artifact, step, ctx, chain_data)
        return store.commit(ctx.out_dir, artifact), "done"


def _measured_run(step: Step, inputs: Inputs, ctx: StageContext) -> Artifact:
    """Run the stage and put its measured peak memory beside the plan's estimate in its metrics. A training
    stage on several processes runs as a torchrun job (pipeline.engine.launch); its rank 0 measures itself."""
    if launch.is_distributed(step.spec, ctx.hardware) or step.spec.isolated:
        return launch.run_in_child(step, inputs, ctx)
    with PeakMemory(ctx.device) as peak:
        artifact = step.spec.run(step.cfg, inputs, ctx)
    artifact.metrics.update(peak_metrics(peak.result(), round(step.memory_bytes / 2**20, 1) if step.memory_bytes else None))
    return artifact


def _stamp(artifact: Artifact, step: Step, inputs: Inputs, vision: bool) -> None:
    if artifact.kind != step.output_kind:
        raise PlanError(f"stage '{step.name}' produced '{artifact.kind}' but planned '{step.output_kind}'")
    artifact.fingerprint = step.fingerprint
    artifact.parent = inputs.primary.fingerprint
    artifact.stage = step.name
    artifact.versions = tool_versions()
    artifact.created = dt.datetime.now().isoformat(timespec="seconds")
    data = [path for _, spec, _ in dataset_fields(step.cfg, vision) for path in spec.paths()]  # image sets only for a VLM, as planned
    if data:
        artifact.meta.setdefault("data", data)


def _write_card(artifact: Artifact, step: Step, ctx: StageContext, chain_data: dict[str, Any]) -> None:
    """The artifact's model card (pipeline/cards), from the run's chain record and the artifacts so far."""
    about = model_card.About.of(chain_data, ctx.model, ctx.device)
    lineage = model_card.lineage(step.name, about.chain, {**ctx.chain, step.name: artifact}, model_card.base_name(about))
    model_card.write(ctx.out_dir, artifact, lineage, about)



def _interrupted_fields(stop: stopping.Interrupted, store: Store, step: Step) -> dict[str, Any]:
    """What chain.json keeps of an interrupted stage: the signal and the checkpoint a re-run resumes from."""
    found = [c for c in (latest(f) for f in store.tmp_folders(step.fingerprint)) if c is not None]
    checkpoint = str(max(found, key=lambda c: c.stat().st_mtime)) if found else None
    resume = f"; run the same command again to resume from {checkpoint}" if checkpoint else ""
    return {"error": f"{stop}{resume}", "signal": signal.Signals(stop.signum).name, "checkpoint": checkpoint}


def _failure_fields(error: Exception) -> dict[str, Any]:
    """What chain.json keeps of a failed stage: the error's first line, the signal and the last lines."""
    fields: dict[str, Any] = {"error": str(error).splitlines()[0] if str(error) else type(error).__name__}
    if isinstance(error, launch.StageFailed):
        fields.update(signal=error.signal_name, last_lines=error.tail)
    return fields


def explain_fingerprint(plan: Plan, name: str) -> str:
    """`+explain_fingerprint=STAGE`: everything that stage's fingerprint hashes, as JSON."""
    import json

    step = next((s for s in plan.steps if s.name == name), None)
    if step is None:
        raise ConfigError(f"explain_fingerprint: no stage '{name}'; stages: {', '.join(s.name for s in plan.steps)}")
    return f"fingerprint of stage {name}: {step.fingerprint}\n" + json.dumps(step.fingerprint_inputs, indent=2,
                                                                           sort_keys=True, default=str)


def run_chain(cfg: DictConfig, run_dir: Path, recipe: str, overrides: list[str], group: str | None) -> dict[str, Any]:
    plugins.load(list(cfg.get("plugins") or []))  # a user's own stage kinds and eval tasks
    if cfg.get("explain"):  # +explain=stages.NAME: the stage's keys, values, defaults and help; nothing loaded
        print(explain(cfg, str(cfg.explain)), flush=True)
        return {}
    remember_named_variables(OmegaConf.to_container(cfg, resolve=False))  # api_key_env: X -> $X is a secret
    store = Store.configured(cfg)
    plan = build_plan(cfg, store, recipe=recipe, device=cfg.hardware.get("device"))
    device = plan.device
    print(plan.render(), flush=True)
    for warning in memory_warnings(plan):
        print(f"warning: {warning}", flush=True)
    if cfg.get("explain_fingerprint"):
        print(explain_fingerprint(plan, str(cfg.explain_fingerprint)), flush=True)
        return {}
    if cfg.get("dry_run"):
        print("dry run: stopping after the plan", flush=True)
        return {}

    run_dir.mkdir(parents=True, exist_ok=True)  # Hydra's record in it is scrubbed already (engine/hydra_scrub.py)
    logger_cfg = typed_config(cfg.logger, LoggerConfig, "logger")
    config = redact(OmegaConf.to_container(cfg, resolve=True))
    tracker = Tracker(logger_cfg, run_dir, config, name=f"{recipe}-{run_dir.name}", group=group)  # fails before work
    record = ChainRecord(run_dir, plan, overrides)
    chain: dict[str, Artifact] = {BASE: plan.base}
    status = "failed"
    failed: set[str] = set()  # optional stages that failed, and the stages that needed them
    current: Step | None = None  # the stage a stop signal ends
    prune = pruning.spec_of(cfg, [s.name for s in plan.steps]) if group is not None else None
    if prune is not None:  # a searching sweep's job: stop where its loss trails the earlier trials'
        tracker.watchers.append(pruning.MedianStop(prune, run_dir))
    try:
        with stopping.handled(cfg.stop_grace_s):
            for step in plan.steps:
                current = step
                if stopping.requested():  # a signal a trainer saw at its last step: the stage finished, the chain stops
                    raise stopping.Interrupted(stopping.requested(), saved=False)
                needed = failed & (set(step.input_names) | step.cfg.also_reads())
                if needed:
                    print(f"\n== stage {step.name}: skipped (needs {', '.join(sorted(needed))}, which failed)", flush=True)
                    record.update(step.name, status="skipped", error=f"needs {', '.join(sorted(needed))}, which failed")
                    failed.add(step.name)
                    continue
                print(f"\n== stage {step.name} ({step.kind}) <- {', '.join(step.input_names)}", flush=True)
                record.update(step.name, status="running")
                ctx = StageContext(name=step.name, out_dir=run_dir, run_dir=run_dir, model=plan.model, device=device,
                                   seed=int(cfg.seed), tracker=tracker, chain=chain,
                                   hardware=OmegaConf.to_container(cfg.hardware, resolve=True))
                started = time.time()
                try:
                    artifact, outcome = run_stage(step, Inputs([chain[n] for n in step.input_names]), ctx, store,
                                                  record.data)
                except stopping.Interrupted as stop:
                    record.update(step.name, **_interrupted_fields(stop, store, step))
                    raise
                except Exception as e:  # recorded in chain.json; an optional stage's failure does not end the chain
                    record.update(step.name, status="failed", **_failure_fields(e))
                    if not step.optional:
                        raise
                    print(f"== stage {step.name}: failed ({str(e).splitlines()[0]}); optional: the chain goes on "
                          f"without it and the stages that need it", flush=True)
                    failed.add(step.name)
                    continue
                seconds = round(time.time() - started, 2)
                chain[step.name] = artifact
                print(f"== stage {step.name}: {outcome} in {seconds}s -> {artifact.path}", flush=True)
                record.update(step.name, status=outcome, artifact=artifact.path, metrics=artifact.metrics, seconds=seconds)
                tracker.summary(step.name, artifact.metrics)
                tracker.log_artifact(step.name, artifact)
        status = "done"
    except pruning.Pruned as pruned:  # the sweeper gets the worst objective; nothing of the stage is committed
        status = "pruned"
        record.update(current.name, status="pruned", error=str(pruned))
        print(f"== stage {current.name}: {pruned}", flush=True)
    except stopping.Interrupted:
        status = "interrupted"
        if current is not None:
            record.data["interrupted_stage"] = current.name
            record.update(current.name, status="interrupted")
        raise
    finally:
        record.finish(status)
        model_card.run_cards(run_dir, {n: a for n, a in chain.items() if n != BASE},
                             model_card.About.of(record.data, plan.model, device))
        report.write(run_dir, record.data, tracker)
        tracker.finish()
    print(report.terminal_summary(run_dir, record.data, tracker), flush=True)
    return record.data
