"""Select: the ship gate. Of one model's compressed variants (exports, each evaluated against a reference eval),
pick the smallest whose quality stays within the bound the user sets, judged on the paired bootstrap interval
of quality retained (variant / reference over the items both answered), not the point estimate; say why each
other variant lost; and hand the winner on (serve, push) as an artifact of its own kind.

    select:
      reference: eval_reference                   # the eval of the model the variants are made from
      candidates: [eval_gguf_q8_0, eval_gguf_q4_k_m]   # evals of the variants ([]: every eval comparing with it)
      metric: math_accuracy
      min_retained: 0.98                          # the interval's lower end must reach this share

The winner's files are hard-linked into the stage's store folder (no copy on one disk), so what follows reads
a complete artifact; an optional variant skipped at plan time leaves the candidates, not the chain."""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, List, Optional

from omegaconf import MISSING

from pipeline.artifact import Artifact, ArtifactKind
from pipeline.engine.context import Inputs, StageContext
from pipeline.engine.contract import StageConfig
from pipeline.engine.registry import stage
from pipeline.engine.report import QUALITY, retained_interval
from pipeline.errors import ConfigError, PlanError
from pipeline.ranges import between, setting

HANDED_ON = (ArtifactKind.gguf, ArtifactKind.model)
MANIFEST = "artifact.json"


@dataclass
class SelectConfig(StageConfig):
    kind: str = setting("select", "the stage kind")
    reference: str = setting(MISSING, "the eval stage of the model the variants are made from")
    candidates: List[str] = setting(factory=list, help="eval stages of the variants ([]: every earlier eval whose "
                                                        "compare_with is the reference and whose input is an export)")
    metric: str = setting("math_accuracy", "the quality kept per item: " + ", ".join(q[0] for q in QUALITY))
    min_retained: float = between(0.98, 0, 1, low_open=True, help="the share of the reference's quality the "
                                                                    "interval's lower end must reach")
    hand_on: Optional[str] = setting(None, "the kind a winner must be, gguf | model (null: the candidates' one "
                                           "kind; needed when they differ)")
    # Not settings (no annotation): filled by validate() from the plan, candidate eval -> its export, and the
    # kind the winner is handed on as.
    exports = None
    handed_on = ArtifactKind.gguf

    def validate(self, where: str, earlier: dict) -> None:
        self.exports = {}
        if self.reference not in earlier or earlier[self.reference].output_kind != ArtifactKind.eval:
            raise ConfigError(f"{where}.reference: '{self.reference}' is not an earlier eval stage; earlier evals: "
                              f"{', '.join(n for n, s in earlier.items() if s.output_kind == ArtifactKind.eval)}")
        if self.metric not in [q[0] for q in QUALITY]:
            raise ConfigError(f"{where}.metric: '{self.metric}'; valid: {', '.join(q[0] for q in QUALITY)} (figures "
                              f"kept per item, so that the interval can be drawn)")
        candidates = self.candidates or [n for n, s in earlier.items() if s.output_kind == ArtifactKind.eval
                                         and getattr(s.cfg, "compare_with", None) == self.reference]
        for name in candidates:
            step = earlier.get(name)
            if step is None or step.output_kind != ArtifactKind.eval:
                raise ConfigError(f"{where}.candidates: '{name}' is not an earlier eval stage")
            export = step.input_names[0]
            if not earlier[export].spec.variant:
                raise ConfigError(f"{where}.candidates: {name} evaluates '{export}', which is not an export (bnb, "
                                  f"GPTQ, GGUF); a ship gate chooses between one model's compressed forms")
            self.exports[name] = export
        if not candidates:
            raise ConfigError(f"{where}.candidates: none; name the eval stages of the variants, or give them "
                              f"compare_with: {self.reference}")
        kinds = {earlier[e].output_kind for e in self.exports.values()}
        if self.hand_on is not None and self.hand_on not in HANDED_ON:
            raise ConfigError(f"{where}.hand_on: '{self.hand_on}'; valid: {', '.join(HANDED_ON)} or null")
        if self.hand_on is None and len(kinds) > 1:
            raise ConfigError(f"{where}.hand_on: the candidates make {', '.join(sorted(map(str, kinds)))}; say which "
                              f"kind may win (what the next stage serves or pushes)")
        self.handed_on = self.hand_on or next(iter(kinds))
        task = next(q[3] for q in QUALITY if q[0] == self.metric)
        blind = [n for n in (self.reference, *self.exports) if task not in (getattr(earlier[n].cfg, "tasks", None) or [])]
        if blind:
            raise ConfigError(f"{where}.metric: {self.metric} comes from task '{task}', which {', '.join(blind)} "
                              f"do(es) not run; add {task} to their tasks")
        self.candidates = list(self.exports)
        self.inputs = [self.reference, *self.candidates]

    def drop_inputs(self, names: set[str]) -> bool:
        """Optional variants skipped at plan time leave the candidates; the reference cannot go."""
        if self.reference in names or not set(self.candidates) - names:
            return False
        self.candidates = [c for c in self.candidates if c not in names]
        self.exports = {c: e for c, e in self.exports.items() if c in self.candidates}
        self.inputs = [self.reference, *self.candidates]
        return True

    def also_reads(self) -> set[str]:
        return set((self.exports or {}).values())


@stage("select", config=SelectConfig, consumes={ArtifactKind.eval}, produces=lambda cfg: cfg.handed_on,
       libraries=())
def run(cfg: SelectConfig, inputs: Inputs, ctx: StageContext) -> Artifact:
    """Judge each variant, pick the smallest that passes, link its files here."""
    reference, evals = inputs.artifacts[0], dict(zip(cfg.candidates, inputs.artifacts[1:]))
    items = next(q[1] for q in QUALITY if q[0] == cfg.metric)
    verdicts = [_verdict(name, evals[name], ctx.chain[cfg.exports[name]], reference, cfg, items)
                for name in cfg.candidates]
    passing = [v for v in verdicts if v["passed"]]
    for v in verdicts:
        ctx.log(f"{v['export']}: {v['why']}")
    if not passing:
        raise PlanError(f"stages.{ctx.name}: no variant keeps {cfg.min_retained:.0%} of {reference.stage}'s "
                        f"{cfg.metric} on the interval's lower end: " + "; ".join(f"{v['export']}: {v['why']}"
                                                                                    for v in verdicts))
    winner = min(passing, key=lambda v: (v["size_mb"], v["export"]))
    for v in verdicts:
        if v is not winner and v["passed"]:
            v["why"] += f"; larger than {winner['export']} ({v['size_mb']:.1f} MB > {winner['size_mb']:.1f} MB)"
    chosen = ctx.chain[winner["export"]]
    _link_files(Path(chosen.path), ctx.out_dir)
    ctx.log(f"selected {winner['export']} ({winner['size_mb']:.1f} MB, retained {winner['retained']:.1%})")
    metrics = {"selected": winner["export"], "selected_size_mb": winner["size_mb"],
               "selected_retained": round(winner["retained"], 4), "candidates_n": len(verdicts),
               "passed_n": len(passing)}
    return Artifact(kind=chosen.kind, path=str(ctx.out_dir), fingerprint="", format=chosen.format,
                    base_model=chosen.base_model, metrics=metrics,
                    meta={**chosen.meta, "selection": {"metric": cfg.metric, "min_retained": cfg.min_retained,
                                                       "reference": reference.stage, "verdicts": verdicts}})


def _verdict(name: str, evaluated: Artifact, export: Artifact, reference: Artifact, cfg: SelectConfig,
             items: str) -> dict[str, Any]:
    figure, base = evaluated.metrics.get(cfg.metric), reference.metrics.get(cfg.metric)
    size = evaluated.metrics.get("size_mb")
    verdict = {"eval": name, "export": export.stage, "kind": str(export.kind), "size_mb": size,
               cfg.metric: figure, "retained": None, "interval": None, "passed": False}
    if not isinstance(figure, (int, float)) or not base or size is None:
        verdict["why"] = f"no {cfg.metric} beside the reference's ({base}) or no size"
        return verdict
    interval = retained_interval({"artifact": evaluated.path}, {"artifact": reference.path}, items=items)
    verdict.update(retained=figure / base, interval=list(interval) if interval else None)
    shown = f"retained {figure / base:.1%}" + (f" [{interval[0]:.1%}, {interval[1]:.1%}]" if interval else "")
    if cfg.hand_on and export.kind != cfg.hand_on:
        verdict["why"] = f"{shown}; a {export.kind}, not a {cfg.hand_on} (hand_on)"
    elif interval is None:
        verdict["why"] = f"{shown}; no interval (too few items both answered right)"
    elif interval[0] < cfg.min_retained:
        verdict["why"] = f"{shown}: lower end below {cfg.min_retained:.0%}"
    else:
        verdict.update(passed=True, why=f"{shown}: passes, {size:.1f} MB")
    return verdict


def _link_files(source: Path, target: Path) -> None:
    """The winner's files in `target`, hard-linked where one disk holds both (else copied); its manifest not."""
    def link_or_copy(src: str, dst: str) -> None:
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    shutil.copytree(source, target, copy_function=link_or_copy, dirs_exist_ok=True,
                    ignore=lambda folder, names: [MANIFEST] if Path(folder) == source else [])
