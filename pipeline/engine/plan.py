"""Turn a composed config into a checked plan before anything heavy runs.

Checks, in order: every stage's config against its dataclass, each stage's inputs (named or
implied) against the kinds earlier stages produce, every data file record by record, the base
model's availability, and a memory estimate. Each stage then gets its fingerprint, and stages
already in the store are marked to be reused.
"""
from __future__ import annotations

import dataclasses
import shutil
from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig, OmegaConf

from pipeline import ranges, stopping
from pipeline.artifact import Artifact
from pipeline.data import datasets as data
from pipeline.data.check_cache import CheckCache
from pipeline.data.lengths import longest_of, sample_lengths
from pipeline.engine import launch, registry, sweep, tracking
from pipeline.engine.contract import StageConfig
from pipeline.engine.fingerprint import environment, fingerprint_inputs, fingerprint_of
from pipeline.engine.store import Store
from pipeline.engine.typed_config import typed_config
from pipeline.errors import ConfigError, PlanError
from pipeline.hashing import hash_json
from pipeline.models import memory
from pipeline.models.architecture import architecture_notes
from pipeline.models.config import ModelConfig
from pipeline.models.loading import (base_artifact, check_available, check_thinking_switch, is_vision, load_tokenizer,
                                     local_folder, pick_device, read_config, resolve_dtype,
                                     unmatched_targets)
from pipeline.models.vision import image_token_counter
from pipeline.models.sources import prepare

BASE = "base"  # the reserved input name of the chain's starting model
# Model keys that change no stage's result by themselves: names, planning hints, the recipes' tuning
# (whose values reach the stages that use them, and are fingerprinted there) and the GGUF a folder came from.
MODEL_KEYS_NOT_HASHED = ("name", "params_b", "active_params_b", "tuning", "source", "hub_id", "license")  # no weight changes


@dataclass
class Step:
    name: str
    spec: registry.StageSpec
    cfg: Any                                   # the stage's typed config
    input_names: list[str]
    output_kind: str
    fingerprint: str = ""
    cached: Artifact | None = None
    memory_bytes: int | None = None            # per process
    memory_processes: int = 1                  # processes on this machine that each need memory_bytes
    sharding: str = ""                         # how a multi-process training stage spreads its memory
    fingerprint_inputs: dict = field(default_factory=dict)  # what the fingerprint hashes (+explain_fingerprint)
    data_notes: list[str] = field(default_factory=list)
    optional: bool = False                     # `optional: true`: skipped (with its dependents) where it cannot run

    @property
    def kind(self) -> str:
        return self.spec.kind


@dataclass
class Plan:
    recipe: str
    model: ModelConfig
    base: Artifact
    steps: list[Step]
    store: Store
    device: str
    n_params: int | None = None
    skipped: list[str] = field(default_factory=list)
    launches: dict[str, str] = field(default_factory=dict)  # stage -> the torchrun command it runs under
    notes: list[str] = field(default_factory=list)          # what the architecture means here (experts, ...)

    def render(self) -> str:
        params = f", {self.n_params / 1e6:.1f}M params" if self.n_params else ""
        source = f", from {self.model.source}" if self.model.source else ""
        lines = [f"tunechain plan: recipe '{self.recipe}', model '{self.model.name}' ({self.model.path}{source}{params}), "
                 f"device {self.device}", f"  store: {self.store.root}"]
        header = ("#", "stage", "kind", "input", "output", "fingerprint", "memory", "status")
        rows = [header] + [
            (str(i), s.name, s.kind, ",".join(s.input_names), s.output_kind, s.fingerprint[:12],
             _memory_cell(s), "reuse" if s.cached else "run")
            for i, s in enumerate(self.steps, 1)
        ]
        widths = [max(len(r[c]) for r in rows) for c in range(len(header))]
        lines += ["  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths)) for row in rows]
        for step in self.steps:
            lines += [f"  data  {step.name}: {note}" for note in step.data_notes]
        lines += [f"  model  {note}" for note in self.notes]
        lines += [f"  skip  {note}" for note in self.skipped]
        lines += [f"  launch  {name}: {command}" for name, command in self.launches.items()]
        lines += [f"  memory  {s.name}: per process; {s.sharding}" for s in self.steps if s.sharding and not s.cached]
        return "\n".join(lines)


def _memory_cell(step: Step) -> str:
    if not step.memory_bytes:
        return "-"
    return memory.human(step.memory_bytes) + (f" x{step.memory_processes}" if step.memory_processes > 1 else "")


def _stage_nodes(cfg: DictConfig) -> list[tuple[str, DictConfig]]:
    stages = cfg.get("stages")
    if not stages:
        raise ConfigError("the recipe defines no stages: pick one with recipe=NAME (see recipes/)")
    return [(str(name), stages[name]) for name in stages]


def _resolve_inputs(name: str, spec: registry.StageSpec, requested: list[str] | None,
                    produced: dict[str, str]) -> list[str]:
    where = f"stages.{name}"
    available = ", ".join(f"{n}: {k}" for n, k in produced.items())
    if requested:
        for wanted in requested:
            if wanted not in produced:
                raise PlanError(f"{where}.inputs: '{wanted}' is not an earlier stage; choose from: {', '.join(produced)}")
            if produced[wanted] not in spec.consumes:
                raise PlanError(f"{where}.inputs: '{wanted}' produces '{produced[wanted]}', but kind '{spec.kind}' "
                                f"takes {sorted(spec.consumes)}")
        return list(requested)
    for earlier in reversed(list(produced)):  # the latest earlier stage whose output it can take
        if produced[earlier] in spec.consumes:
            return [earlier]
    raise PlanError(f"{where} (kind '{spec.kind}') needs an input of kind {' or '.join(sorted(spec.consumes))}, "
                    f"but no earlier stage produces one (earlier: {available})")


def dataset_fields(cfg: Any, vision: bool = True) -> list[tuple[str, data.DatasetSpec, str]]:
    """(field name, spec, purpose) for every DatasetSpec field of a stage config that its settings use; a field
    declared `images=True` (image questions) only for a vision-language model."""
    unused = cfg.unused_datasets()
    found = []
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if f.metadata.get("images") and not vision:
            continue
        if isinstance(value, data.DatasetSpec) and f.name not in unused:
            found.append((f.name, value, f.metadata.get("purpose", "sft")))
    return found


def _plain(cfg: Any) -> dict[str, Any]:
    return OmegaConf.to_container(OmegaConf.structured(cfg), enum_to_str=True)  # type: ignore[return-value]


def build_plan(cfg: DictConfig, store: Store, recipe: str = "?", device: str | None = None) -> Plan:
    """Check a composed chain and plan it, phase by phase; `device` None: cuda when available, resolved only
    after every config is known good (importing torch is slow)."""
    hardware = OmegaConf.to_container(cfg.hardware, resolve=True) if cfg.get("hardware") is not None else {}
    model, problems = _model(cfg, hardware)
    if store.root.exists() and not store.root.is_dir():
        raise ConfigError(f"paths.store: {store.root} is a file, not a folder; set paths.store (or TUNECHAIN_STORE) "
                          f"to a folder")
    plan = Plan(recipe=recipe, model=model, base=base_artifact(model), steps=[], store=store, device=device or "-")
    unrunnable = _type_stages(cfg, plan, problems)
    sweep.check_objective(cfg, [s.name for s in plan.steps])
    for step, reason in unrunnable:
        if step in plan.steps:
            _skip(plan, step, reason)
    plan.device = device or pick_device()  # part of every fingerprint: a CPU fp32 artifact is not a GPU bf16 one
    plan.notes = architecture_notes(read_config(local_folder(model.path)), plan.device)
    _fingerprint(plan, cfg, hardware)
    if any(not s.cached for s in plan.steps):
        _check_device(plan)
        check_available(model)
        _plan_memory(plan, hardware)
        _check_disk(plan)
    _plan_launches(plan, hardware)
    return plan


SEED_MAX = 2**32 - 1  # numpy's seed range (torch and random take it too)


def seed_problems(seed: Any) -> list[str]:
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= SEED_MAX:
        return [f"seed: {seed!r}; valid: an integer in [0, {SEED_MAX}]"]
    return []


def _model(cfg: DictConfig, hardware: dict) -> tuple[ModelConfig, list[str]]:
    """The chain's model, prepared (a GGUF or PyPI model converted once) unless a value is out of range; and
    the out-of-range values of the model and the hardware, reported with the stages' (pipeline.ranges)."""
    typed = typed_config(cfg.model, ModelConfig, "model")
    problems = (ranges.problems(typed, "model") + launch.hardware_problems(hardware) + seed_problems(cfg.get("seed"))
                + stopping.grace_problems(cfg.get("stop_grace_s")) + tracking.backend_problems(cfg.get("logger")))
    model = prepare(typed) if not problems else typed
    unmatched = unmatched_targets(local_folder(model.path), list(model.lora_target_modules)) if not problems else []
    if unmatched:
        problems.append(f"model.lora_target_modules: {unmatched} match no module of {model.path}")
    check_thinking_switch(model)
    return model, problems


def _tokenizer_once(plan: Plan):
    """A function giving the chain's tokenizer as stages load it, read on first call; None for a hub id or a
    folder without one (the stage then checks at its start)."""
    loaded: list = []

    def tokenizer():
        if not loaded:
            folder = local_folder(plan.model.path)
            try:
                loaded.append(load_tokenizer(str(folder), plan.model) if folder else None)
            except (OSError, ValueError):
                loaded.append(None)
        return loaded[0]
    return tokenizer


def _type_stages(cfg: DictConfig, plan: Plan, problems: list[str]) -> list[tuple[Step, str]]:
    """Every stage's typed config, range check, rules and inputs, so a typo anywhere fails before any file is
    read; returns the optional stages that cannot run here, with why."""
    produced: dict[str, str] = {BASE: "model"}
    unrunnable: list[tuple[Step, str]] = []
    chain_tokenizer = _tokenizer_once(plan)
    for name, node in _stage_nodes(cfg):
        spec = _spec_of(name, node)
        typed = typed_config(node, spec.config_cls, f"stages.{name}")
        out_of_range = ranges.problems(typed, f"stages.{name}")
        problems += out_of_range
        cannot_run = None
        if not out_of_range:  # validate() may rely on values being in range
            try:
                typed.validate(f"stages.{name}", {s.name: s for s in plan.steps})
            except (ConfigError, PlanError) as e:
                if not typed.optional:  # an optional stage that cannot run here is skipped, with the reason
                    raise
                cannot_run = str(e)
        inputs = _resolve_inputs(name, spec, typed.inputs, produced)
        if not out_of_range:
            _check_streaming(typed, f"stages.{name}")
        if not problems:  # what only the chain's model can tell
            try:
                typed.check_family(f"stages.{name}", local_folder(plan.model.path))
            except (ConfigError, PlanError) as e:
                if not typed.optional:
                    raise
                cannot_run = cannot_run or str(e)
            if inputs == [BASE]:
                typed.check_model(f"stages.{name}", local_folder(plan.model.path))
            if type(typed).check_tokenizer is not StageConfig.check_tokenizer and (tokenizer := chain_tokenizer()):
                typed.check_tokenizer(f"stages.{name}", tokenizer)
        plan.steps.append(Step(name, spec, typed, inputs, spec.output_kind(typed), optional=typed.optional))
        produced[name] = plan.steps[-1].output_kind
        if cannot_run:
            unrunnable.append((plan.steps[-1], cannot_run))
    if problems:
        raise ConfigError(f"{len(problems)} value(s) out of range:\n  " + "\n  ".join(problems)
                          if len(problems) > 1 else problems[0])
    return unrunnable


def _check_streaming(cfg: Any, where: str) -> None:
    """A streamed dataset only where the kind reads streams, and with a step count (a stream has no length)."""
    for name in [name for name, spec, _ in dataset_fields(cfg) if spec.streaming]:
        if name not in cfg.streamed_datasets():
            can = ", ".join(k for k in registry.kinds() if registry.get(k).config_cls.streamed_datasets())
            raise ConfigError(f"{where}.{name}.streaming: this stage kind reads its data whole; streaming works for "
                              f"{can} (set streaming: false here)")
        if getattr(cfg, "max_steps", -1) <= 0:
            raise ConfigError(f"{where}.max_steps: {getattr(cfg, 'max_steps', None)}, but {name} is streamed and a "
                              f"stream has no length; set max_steps to the steps to train")


def _spec_of(name: str, node: Any) -> registry.StageSpec:
    if name == BASE:
        raise ConfigError(f"stages.{name}: '{BASE}' is reserved for the chain's model; rename the stage")
    kind = node.get("kind") if isinstance(node, DictConfig) else None
    if not kind:
        raise ConfigError(f"stages.{name}: no 'kind'; compose it from a stage default (+stage@stages.{name}=<kind>) "
                          f"or set kind to one of: {', '.join(registry.kinds())}")
    return registry.get(str(kind))


def _fingerprint(plan: Plan, cfg: DictConfig, hardware: dict) -> None:
    """Each stage's data (each file version checked once, then known), fingerprint, and stored artifact if any."""
    dtype = resolve_dtype(plan.model.dtype, plan.device, plan.model.path)
    model_extra = hash_json({k: v for k, v in dataclasses.asdict(plan.model).items() if k not in MODEL_KEYS_NOT_HASHED})
    fingerprints: dict[str, str] = {BASE: plan.base.fingerprint}
    vision = is_vision(plan.model)
    checks = CheckCache(plan.store.root / ".data")  # what earlier plans learned of each data file version
    for step in plan.steps:
        data_fps = []
        for field_name, dataset, purpose in dataset_fields(step.cfg, vision):
            try:
                checked = data.check(dataset, purpose, checks)
            except data.DataError as e:  # still a DataError, now naming the key that points at the data
                raise data.DataError(f"stages.{step.name}.{field_name}: {e}") from None
            streamed = ", streamed" if dataset.streaming else ""
            step.data_notes.append(f"{field_name} <- {dataset.path or 'mixture'} ({checked.describe(purpose)}{streamed})")
            data_fps.append(data.fingerprint(dataset, checks))
        step.fingerprint_inputs = fingerprint_inputs(
            step.kind, _plain(step.cfg), [fingerprints[i] for i in step.input_names], data_fps,
            extra={"model": model_extra, "seed": cfg.get("seed"), **_world_key(step.spec, hardware)},
            environment=environment(step.spec, plan.device, dtype))
        step.fingerprint = fingerprint_of(step.fingerprint_inputs)
        step.cached = plan.store.find(step.output_kind, step.fingerprint) if step.spec.cache else None
        fingerprints[step.name] = step.fingerprint


def _check_device(plan: Plan) -> None:
    """What only the device can tell (e.g. 4-bit kernels on CPU), for the stages that will run."""
    if plan.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            build = f"this torch ({torch.__version__}) is a CPU build" if torch.version.cuda is None else \
                f"this torch (CUDA {torch.version.cuda}) sees no GPU"
            raise PlanError(f"hardware.device: cuda, but {build}; set hardware.device=cpu, or null to pick the "
                            f"device found")
    for step in list(plan.steps):
        if step in plan.steps and not step.cached:
            try:
                step.cfg.check_device(f"stages.{step.name}", plan.device)
            except PlanError as e:
                if not step.optional:
                    raise
                _skip(plan, step, str(e))


def _world_key(spec: registry.StageSpec, hardware: dict) -> dict:
    """A training stage on N processes trains on N times the per-device batch: another artifact. One process
    adds nothing, so single-process fingerprints stay what they were."""
    if not launch.is_distributed(spec, hardware):
        return {}
    processes, nodes = launch.world(hardware)
    return {"world_size": processes * nodes}


def _plan_launches(plan: Plan, hardware: dict) -> None:
    """Training stages that run as torchrun jobs: what the hardware needs checked first, and the command."""
    distributed = [s for s in plan.steps if launch.is_distributed(s.spec, hardware) and not s.cached]
    if distributed:
        launch.check(hardware, plan.device)
    for step in distributed:
        plan.launches[step.name] = " ".join(launch.launch_command(hardware, "<job.json>")[1:]).replace(
            "-m torch.distributed.run", "torchrun", 1)


def _skip(plan: Plan, step: Step, reason: str) -> None:
    """Drop an optional stage that cannot run here, and every later stage that reads or compares with it."""
    dropped = {step.name}
    for later in plan.steps:
        read = dropped & (set(later.input_names) | later.cfg.also_reads())
        if later.name not in dropped and read and later.cfg.drop_inputs(read):  # it goes on without them
            later.input_names = [n for n in later.input_names if n not in read]
            continue
        if later.name in dropped or read:
            dropped.add(later.name)
    plan.steps = [s for s in plan.steps if s.name not in dropped]
    plan.skipped.append(f"{', '.join(sorted(dropped))}: skipped (optional) because {reason}")


def _plan_memory(plan: Plan, hardware: dict) -> None:
    """Each stage's estimate (pipeline.models.memory), with training lengths and prompt lengths measured on its
    data; per process, under the profile's sharding, for training stages that run on several processes."""
    folder = local_folder(plan.model.path)
    shape = memory.ModelShape.from_folder(folder) if folder else None
    if shape is None and plan.model.params_b:
        active = int(plan.model.active_params_b * 1e9) if plan.model.active_params_b else None
        shape = memory.ModelShape.guess(int(plan.model.params_b * 1e9), active)
    if shape is None:
        return
    plan.n_params = shape.n_params
    dtype = resolve_dtype(plan.model.dtype, plan.device, plan.model.path)
    tokenizer = _plan_tokenizer(plan, folder)
    image_tokens = image_token_counter(folder) if is_vision(plan.model) else None
    by_name = {s.name: s for s in plan.steps}
    for step in plan.steps:
        work = step.cfg.memory_profile([by_name[n] for n in step.input_names if n in by_name])
        if tokenizer is not None:
            _measure_lengths(step, work, tokenizer, image_tokens)
        sharding = memory.Sharding.from_hardware(hardware) if launch.is_distributed(step.spec, hardware) else None
        if sharding is not None:
            step.memory_processes, step.sharding = launch.world(hardware)[0], sharding.describe()
        step.memory_bytes = memory.estimate(work, shape, dtype, plan.device, sharding, own_process=step.spec.isolated)


def _plan_tokenizer(plan: Plan, folder):
    if folder is None or not any(not s.cached for s in plan.steps):
        return None
    try:
        return load_tokenizer(str(folder), plan.model)
    except Exception:  # noqa: BLE001 - the estimate then uses max_length; loading fails later with its own error
        return None


LONG_BATCH_BATCHES = 4


def _measure_lengths(step: Step, work: memory.Workload, tokenizer, image_tokens=None) -> None:
    """Replace the workload's worst-case lengths by what the stage's data has (a vision-language model's
    images counted as the tokens its processor makes of them)."""
    fields = dataset_fields(step.cfg, vision=image_tokens is not None)
    if work.kind == "train" and fields:
        _, spec, purpose = fields[0]
        # a long batch: the longest of a few batches' records (measured: step peaks vary by ~10% over a run)
        found = longest_of(sample_lengths(spec, purpose, tokenizer, image_tokens=image_tokens),
                           LONG_BATCH_BATCHES * work.batch, work.length)
        if found:
            # a stage that answers its own prompts (GRPO's prompts; GKD's chats, answered by the student) trains
            # on sequences as long as the prompt and what it writes
            completion = work.generate_tokens if work.generate_batch else 0
            work.length = min(work.length, found + completion)
            work.prompt_length = found
    elif work.kind == "generate":
        prompts = [(spec, purpose) for _, spec, purpose in fields if purpose in ("gsm8k", "instruct", "prompt")]
        if prompts:
            found = longest_of(sample_lengths(prompts[0][0], prompts[0][1], tokenizer, image_tokens=image_tokens),
                               work.batch)
            work.prompt_length = found or work.prompt_length


def _check_disk(plan: Plan) -> None:
    """Stages that write a model-sized file (merge, exports) must fit in the store's free space, counting what
    the earlier stages of this run will write first; else one line, before any stage runs."""
    if not plan.n_params:
        return
    dtype = resolve_dtype(plan.model.dtype, plan.device, plan.model.path)
    existing = next(p for p in (plan.store.root, *plan.store.root.parents) if p.exists())  # a new store: its disk
    free = shutil.disk_usage(existing).free
    needed = 0
    for step in plan.steps:
        if step.cached:
            continue
        needed += step.cfg.disk_bytes(plan.n_params, dtype)
        if needed > free:
            raise PlanError(f"stages.{step.name}: needs ~{memory.human(needed)} free in the store {plan.store.root} "
                            f"(with the stages before it), which has {memory.human(free)}; free space there or set "
                            f"paths.store to a larger disk")


def memory_warnings(plan: Plan) -> list[str]:
    """Stages whose estimate exceeds what is free: per GPU on CUDA (each process has its own), and
    all of this machine's processes together on CPU (they share its RAM)."""
    have = memory.available_bytes(plan.device)
    warnings = []
    for s in plan.steps:
        if not s.memory_bytes or s.cached:
            continue
        need = s.memory_bytes * (s.memory_processes if plan.device != "cuda" else 1)
        if need > have:
            each = f" ({s.memory_processes} processes x {memory.human(s.memory_bytes)})" if need != s.memory_bytes else ""
            per = " per GPU" if plan.device == "cuda" and s.memory_processes > 1 else ""
            warnings.append(f"stage '{s.name}' may need ~{memory.human(need)}{per}{each} but {plan.device} has "
                            f"{memory.human(have)} available; consider {memory.REMEDIES}")
    return warnings
