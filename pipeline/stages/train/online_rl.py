"""What the online RL stages share (GRPO, RLOO): sample a group of completions per prompt with the policy,
score them with the rewards (pipeline/training/rewards.py; a `reward` stage's model among them), and push
the policy toward the better ones. The stage files (grpo.py, rloo.py) add their advantage and loss settings.

The input decides what is trained:
  - an adapter (e.g. from sft): that adapter keeps training; the reference is a frozen copy of it
    (the SFT policy);
  - a model: a new LoRA (method lora, reference = the model) or the whole model (method full).
A reward model named in `rewards` ({stage: reward}) is an input too, after the policy: a retrained reward
model retrains the policy.
"""
from __future__ import annotations

import importlib.util
import shutil
import time
from dataclasses import dataclass, field
from typing import Any, List, Optional

from omegaconf import MISSING

from pipeline.artifact import Artifact, ArtifactKind
from pipeline.data.datasets import DatasetSpec, prepared
from pipeline.engine.context import Inputs, StageContext
from pipeline.engine.contract import StageConfig
from pipeline.errors import ConfigError, PlanError
from pipeline.models.loading import (
    load_causal_lm,
    load_reward_model,
    load_tokenizer,
    save_tokenizer,
    whole_weights_for_generation,
)
from pipeline.models.memory import Workload
from pipeline.ranges import at_least, between, one_of, positive, setting
from pipeline.stages.train.preference import Run, trainable_policy
from pipeline.stages.train.sft import Method
from pipeline.training import checkpoints
from pipeline.training.checkpoints import CheckpointSpec
from pipeline.training.common import SCHEDULERS, LoraSpec, device_args, policy_artifact, save_policy
from pipeline.training import difficulty
from pipeline.training.difficulty import DifficultySpec
from pipeline.training.rewards import build, parse, resolve
from pipeline.training.vision import VisionSpec

BASE = "base"  # the chain's model as an input name (pipeline.engine.plan.BASE)
VLLM_CHOICES = ("auto", "true", "false")
REWARD_WINDOW = 0.2  # *_start/*_end average the first/last 20% of logged steps (one sample is noisy)
# trl's per-step logs worth a start/end figure: the mean reward, each reward's mean, and the share of groups
# whose completions all scored alike (zero advantage: nothing learned from them)
CURVE_LOGS = {"reward": "reward", "frac_reward_zero_std": "zero_std_groups"}


@dataclass
class OnlineRL(StageConfig):
    method: Method = setting(Method.lora, "lora: continue an input adapter, or a new LoRA on a model")
    dataset: DatasetSpec = field(default=MISSING, metadata={"help": "prompt records: {\"prompt\": messages, \"answer\": str}", "purpose": "prompt"})
    rewards: List[Any] = setting(factory=lambda: [{"name": "correctness", "weight": 1.0}, {"name": "format", "weight": 0.2}],
                                 help="names or {name, weight, args}; built-ins: correctness, closeness, format, "
                                      "json_valid, length; module:function; or {stage: <a reward stage>, weight}")
    num_generations: int = at_least(2, MISSING, help="group size G: completions sampled per prompt")
    beta: float = at_least(0, 0.04, help="KL coefficient to the reference (0: no reference model)")
    epsilon: float = positive(0.2, help="clipping of the policy ratio")
    epsilon_high: Optional[float] = at_least(0, None, help="upper clip of the ratio (DAPO clip-higher: 0.28; null: "
                                                           "epsilon)")
    mask_truncated_completions: bool = setting(False, "completions cut at max_completion_length take no part in the "
                                                      "loss (DAPO)")
    max_completion_length: int = at_least(1, MISSING, help="tokens per sampled completion")
    temperature: float = positive(1.0, help="RL needs sampled, different completions")
    top_p: float = between(1.0, 0, 1, low_open=True, help="nucleus sampling (1: off)")
    top_k: int = at_least(0, MISSING, help="0: off; small models sample junk from the long tail without it")
    learning_rate: float = positive(MISSING, help="peak learning rate")
    max_steps: int = at_least(1, MISSING, help="optimizer steps")
    per_device_train_batch_size: int = at_least(1, MISSING, help="completions per step (prompts per step = this / G)")
    gradient_accumulation_steps: int = at_least(1, 1, help="batches per optimizer step")
    num_iterations: int = at_least(1, 1, help="optimisation passes over each generated batch (mu)")
    warmup_steps: float = at_least(0, 0.0, help="< 1: a ratio of all steps")
    lr_scheduler_type: str = one_of("constant", SCHEDULERS, help="transformers' scheduler name")
    max_grad_norm: float = positive(1.0, help="gradients clipped to this norm")
    logging_steps: int = at_least(1, 1, help="steps between reward and loss rows")
    use_vllm: str = setting("auto", "auto: vLLM where a GPU and vllm are present | true | false")
    gradient_checkpointing: Optional[bool] = setting(None, "null: on for GPUs and models of 1B params and more")
    checkpoint: CheckpointSpec = setting(factory=CheckpointSpec,
                                         help="mid-stage checkpoints in the stage's temporary store folder; a re-run "
                                              "resumes")
    lora: LoraSpec = setting(factory=LoraSpec, help="LoRA settings of a new adapter; an input adapter keeps its own")
    vision: VisionSpec = setting(factory=VisionSpec, help="a vision-language model: which image-side parts a new "
                                                          "adapter trains")
    difficulty: DifficultySpec = setting(factory=DifficultySpec,
                                         help="train only on prompts the input policy sometimes passes (pass rate "
                                              "measured before training; samples 0: off)")

    def check_family(self, where: str, folder) -> None:
        if self.method == Method.lora:
            self.lora.check_family(f"{where}.lora", folder)

    def reward_stages(self) -> list[str]:
        return [s.stage for s in parse(self.rewards, "rewards") if s.stage]

    def also_reads(self) -> set[str]:
        return set(self.reward_stages())

    def validate(self, where: str, earlier: dict) -> None:
        specs = parse(self.rewards, f"{where}.rewards")
        batch = self.per_device_train_batch_size * self.gradient_accumulation_steps
        if batch % self.num_generations:
            raise ConfigError(f"{where}.per_device_train_batch_size: {self.per_device_train_batch_size} x "
                              f"gradient_accumulation_steps {self.gradient_accumulation_steps} = {batch} completions "
                              f"per step must be a multiple of num_generations ({self.num_generations})")
        if vllm_choice(self.use_vllm) not in VLLM_CHOICES:
            raise ConfigError(f"{where}.use_vllm: '{self.use_vllm}'; valid: {', '.join(VLLM_CHOICES)}")
        self._check_difficulty(f"{where}.difficulty")
        judges = [s.stage for s in specs if s.stage]
        reward_models = [n for n, s in earlier.items() if s.output_kind == ArtifactKind.reward_model]
        for i, spec in enumerate(specs):
            if spec.stage and spec.stage not in reward_models:
                kind = f"it produces '{earlier[spec.stage].output_kind}'" if spec.stage in earlier else \
                    "it is not an earlier stage"
                raise ConfigError(f"{where}.rewards[{i}].stage: '{spec.stage}' is not a reward model ({kind}); "
                                  f"earlier reward stages: {', '.join(reward_models) or '(none: add a stage of kind reward)'}")
        if judges or reward_models:  # the policy is never a reward model, even as the latest earlier stage
            self.inputs = [self._policy_input(where, earlier)] + judges

    def _check_difficulty(self, where: str) -> None:
        spec = self.difficulty
        if not spec.samples:
            return
        resolve(spec.reward, f"{where}.reward")
        if spec.min_pass >= spec.max_pass:
            raise ConfigError(f"{where}.min_pass: {spec.min_pass} must be below max_pass ({spec.max_pass})")
        if spec.samples < 2:
            raise ConfigError(f"{where}.samples: 1 gives pass rates of 0 or 1 only, none strictly between "
                              f"min_pass and max_pass; sample 2 or more (or 0: off)")

    def _policy_input(self, where: str, earlier: dict) -> str:
        """The policy: the first input named, else the latest earlier model or adapter, else the chain's model."""
        policies = [n for n, s in earlier.items() if s.output_kind in (ArtifactKind.model, ArtifactKind.adapter)]
        policy = self.inputs[0] if self.inputs else (policies[-1] if policies else BASE)  # normalised: policy first
        if policy != BASE and policy not in policies:
            raise ConfigError(f"{where}.inputs: the policy '{policy}' is not an earlier model or adapter (a reward "
                              f"model goes in rewards as {{stage: {policy}}}); choose from: "
                              f"{', '.join([BASE] + policies)}")
        return policy

    def check_device(self, where: str, device: str) -> None:
        if vllm_choice(self.use_vllm) == "true" and not vllm_usable(device):
            raise PlanError(f"{where}.use_vllm: true, but vLLM needs a CUDA GPU and the vllm package "
                            f"(device {device}, vllm {'installed' if _has_vllm() else 'not installed'}); "
                            "set use_vllm: auto or false to generate with transformers")

    def memory_profile(self, sources):
        reference = 1.0 if self.method == Method.full and self.beta > 0 else 0.0
        return Workload(kind="train", method=self.method.value, batch=self.per_device_train_batch_size,
                        length=128 + self.max_completion_length, lora_rank=self.lora.r,
                        gradient_checkpointing=self.gradient_checkpointing,
                        extra_weights=reference + len(self.reward_stages()),
                        generate_batch=self.per_device_train_batch_size, generate_tokens=self.max_completion_length)

    def trainer_settings(self) -> dict[str, Any]:
        """The stage's own trl settings (its advantage and loss), beside the shared ones."""
        return {}

    def trainer_inputs(self, tokenizer, log) -> dict[str, Any]:
        """The stage's own trainer arguments beside the model, rewards and data (grpo: its tools)."""
        return {}


def vllm_choice(value: Any) -> str:
    """YAML reads `true` as a boolean, which the str field stores as 'True'."""
    return str(value).lower()


def _has_vllm() -> bool:
    return importlib.util.find_spec("vllm") is not None


def vllm_usable(device: str) -> bool:
    return device == "cuda" and _has_vllm()


def reward_curve(log_history: list[dict[str, Any]]) -> dict[str, float]:
    """Mean reward, each reward's mean and the share of zero-variance groups over the first and the last
    REWARD_WINDOW of logged steps."""
    rows = [row for row in log_history if row.get("reward") is not None]
    if not rows:
        return {}
    n = max(1, round(len(rows) * REWARD_WINDOW))
    names = dict(CURVE_LOGS)
    names.update({k: "reward_" + k.split("/")[1] for k in sorted(rows[0])
                  if k.startswith("rewards/") and k.endswith("/mean")})
    curve: dict[str, float] = {}
    for key, name in names.items():
        first = [r[key] for r in rows[:n] if r.get(key) is not None]
        last = [r[key] for r in rows[-n:] if r.get(key) is not None]
        if first and last:
            curve[f"{name}_start"] = round(sum(first) / len(first), 4)
            curve[f"{name}_end"] = round(sum(last) / len(last), 4)
    return curve


def _policy(cfg: OnlineRL, source: Artifact, ctx: StageContext):
    """The model to train and how: (model, peft_config, what the log says). An adapter trained in full is merged
    into a folder first: trl builds the reference for beta > 0 from the policy's folder, which must be the merged
    model, not the adapter's base."""
    if source.kind == ArtifactKind.adapter and cfg.method != Method.lora:
        merged_dir = ctx.out_dir / "_policy_start"
        load_causal_lm(source, ctx.model, ctx.device, merge_adapter=True).save_pretrained(str(merged_dir))
        source = Artifact(kind="model", path=str(merged_dir), fingerprint="")
    return trainable_policy(cfg, source, ctx)


def _reward_models(cfg: OnlineRL, ctx: StageContext) -> dict[str, tuple[Any, Any]]:
    """Each reward stage's model (sequence classification, one score) and its tokenizer, by stage name."""
    loaded = {}
    for name in cfg.reward_stages():
        artifact = ctx.chain[name]
        scorer = load_reward_model(artifact, ctx.model, ctx.device).eval()
        scorer.config._name_or_path = name  # trl logs rewards/<this>/mean: the stage's name, not a store path
        loaded[name] = (scorer, load_tokenizer(artifact.tokenizer_dir(), ctx.model))
    return loaded


def _by_difficulty(cfg: OnlineRL, model, tokenizer, dataset, ctx: StageContext):
    """The prompts the input policy sometimes passes, measured on `difficulty.pool` of them; and the figures."""
    spec = cfg.difficulty
    if not spec.samples:
        return dataset, {}
    import torch

    from accelerate import PartialState

    pool = dataset.select(range(min(spec.pool or len(dataset), len(dataset))))
    rows = pool.to_list()
    torch.manual_seed(ctx.seed)
    sampling = {"temperature": cfg.temperature, "top_p": cfg.top_p, **({"top_k": cfg.top_k} if cfg.top_k else {})}
    state = PartialState()  # torchrun's ranks: each measures its share

    def measure(share: list[dict]) -> list[float]:  # on the weights' own device (FSDP's rank 0: the CPU)
        return difficulty.pass_rates(model, tokenizer, share, spec.samples, sampling, cfg.max_completion_length,
                                     cfg.per_device_train_batch_size, str(next(model.parameters()).device),
                                     resolve(spec.reward))
    whole, measuring = whole_weights_for_generation(model)
    with whole:
        rates = difficulty.spread(rows, measure, state.process_index, state.num_processes, measuring)
    kept = difficulty.keep(rates, spec)
    if state.is_main_process:
        difficulty.write_records(ctx.out_dir / "difficulty.jsonl", rows, rates, kept)
    figures = difficulty.summary(rates, kept)
    shared = "" if state.num_processes == 1 else (
        ", measured by rank 0 alone: the other ranks hold no weights before FSDP shards them" if measuring == 1
        else f", measured {-(-len(rows) // state.num_processes)} a process")
    ctx.log(f"difficulty: {len(kept)} of {len(rows)} prompts kept (pass rate in ({spec.min_pass}, {spec.max_pass}) "
            f"over {spec.samples} samples{shared}); all passed {figures['difficulty_all_pass']:.0%}, all failed "
            f"{figures['difficulty_all_fail']:.0%}, mean pass rate {figures['difficulty_mean_pass']:.0%}")
    if not kept:
        raise RuntimeError(f"stage {ctx.name}: no prompt has a pass rate in ({spec.min_pass}, {spec.max_pass}) "
                           f"(see {ctx.out_dir / 'difficulty.jsonl'}); widen difficulty.min_pass / max_pass, raise "
                           f"difficulty.samples or difficulty.pool, or set difficulty.samples: 0")
    return pool.select(kept), figures


def train_online(cfg: OnlineRL, inputs: Inputs, ctx: StageContext, trainer_class, config_class, label: str) -> Artifact:
    """Run `trainer_class` (trl's GRPOTrainer or RLOOTrainer) on the prompts with the rewards; the trained
    adapter (or model) with its reward curve."""
    source = inputs.primary
    specs = parse(cfg.rewards, f"stages.{ctx.name}.rewards")
    reward_funcs, weights, reward_tokenizers = build(specs, _reward_models(cfg, ctx))
    use_vllm = vllm_choice(cfg.use_vllm) == "true" or (vllm_choice(cfg.use_vllm) == "auto" and vllm_usable(ctx.device))
    tokenizer = load_tokenizer(source.tokenizer_dir(), ctx.model, padding_side="left")
    dataset = prepared(cfg.dataset, "prompt", hardware=ctx.hardware, desc="prompts")  # the rewards get every column
    args = config_class(
        output_dir=str(ctx.out_dir / "trainer"), max_steps=cfg.max_steps, learning_rate=cfg.learning_rate,
        per_device_train_batch_size=cfg.per_device_train_batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps, num_generations=cfg.num_generations,
        beta=cfg.beta, epsilon=cfg.epsilon, epsilon_high=cfg.epsilon_high,
        mask_truncated_completions=cfg.mask_truncated_completions, max_completion_length=cfg.max_completion_length,
        temperature=cfg.temperature, top_p=cfg.top_p, top_k=cfg.top_k, num_iterations=cfg.num_iterations,
        reward_weights=weights, warmup_steps=cfg.warmup_steps,
        lr_scheduler_type=cfg.lr_scheduler_type, max_grad_norm=cfg.max_grad_norm, logging_steps=cfg.logging_steps,
        logging_first_step=True, seed=ctx.seed, use_vllm=use_vllm, vllm_mode="colocate", **cfg.trainer_settings(),
        **checkpoints.trainer_args(cfg.checkpoint),
        **device_args(ctx.device, ctx.hardware, cfg.gradient_checkpointing, source, ctx.model.params_b),
    )
    model, peft_config, how = _policy(cfg, source, ctx)  # after the arguments: partitioned under ZeRO-3
    dataset, measured = _by_difficulty(cfg, model, tokenizer, dataset, ctx)
    generation = "vllm" if use_vllm else "transformers"
    ctx.log(f"{label}: {how}; G={cfg.num_generations}, {cfg.per_device_train_batch_size // cfg.num_generations} "
            f"prompts/step, rewards {', '.join(f'{s.label} x{s.weight:g}' for s in specs)}; generation with {generation}")
    training = Run(cfg, ctx)
    dataset = training.untag(dataset, cfg.dataset)
    trainer = trainer_class(model=model, reward_funcs=reward_funcs, args=args, train_dataset=dataset,
                            processing_class=tokenizer, reward_processing_classes=reward_tokenizers,
                            peft_config=peft_config, **cfg.trainer_inputs(tokenizer, ctx.log),
                            callbacks=training.callbacks())
    started = time.time()
    result = trainer.train(resume_from_checkpoint=checkpoints.resume_point(ctx.out_dir, cfg.max_steps, ctx.log))
    save_policy(trainer, ctx.out_dir, lora=cfg.method == Method.lora)  # every rank: gathered, rank 0 writes
    if trainer.is_world_process_zero():
        save_tokenizer(tokenizer, source, ctx.out_dir)
    for scratch in ("trainer", "_policy_start"):
        shutil.rmtree(ctx.out_dir / scratch, ignore_errors=True)
    metrics = {"train_loss": float(result.training_loss), "train_steps": int(result.global_step),
               "train_runtime": round(time.time() - started, 2), "train_records": len(dataset),
               "generation": generation, **measured, **reward_curve(trainer.state.log_history),
               "health_warnings": training.health.warnings}
    ctx.log(f"mean reward {metrics.get('reward_start', float('nan')):.3f} -> {metrics.get('reward_end', float('nan')):.3f}, "
            f"zero-variance groups {metrics.get('zero_std_groups_start', float('nan')):.0%} -> "
            f"{metrics.get('zero_std_groups_end', float('nan')):.0%} in {metrics['train_steps']} steps")
    meta = {"rewards": [{"name": s.label, "weight": s.weight, "args": s.args} for s in specs], "trained": how,
            **cfg.trainer_settings()}
    return policy_artifact(source, ctx.out_dir, cfg.method == Method.full,
                           cfg.lora if peft_config is not None else None, metrics, meta)
