"""The command line around Hydra: friendly errors for mistyped stage keys, then the runner; and the commands
that are not a chain (`verify`)."""
from __future__ import annotations

import os
import runpy
import sys
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from pipeline import stopping
from pipeline.engine import plugins, registry, sweep
from pipeline.engine.configstore import register
from pipeline.engine.runner import run_chain
from pipeline.engine.typed_config import unknown_key_message
from pipeline.errors import TunechainError
from pipeline.paths import PROJECT_ROOT

register()  # before Hydra composes anything (main.py imports this module first)

CONF_DIR = PROJECT_ROOT / "conf"


COMMANDS = {"verify": "pipeline.engine.verify"}  # name -> module with main(argv) -> exit status


def command(argv: list[str]) -> None:
    """`tunechain verify ...` (or `python main.py verify ...`): run that command and exit; a chain's
    overrides are left to Hydra."""
    if len(argv) > 1 and argv[1] in COMMANDS:
        import importlib

        sys.exit(importlib.import_module(COMMANDS[argv[1]]).main(argv[2:]))


def main() -> None:
    """The `tunechain` console script: a command above, else a chain exactly as `python main.py ...` runs it."""
    command(sys.argv)
    entry = PROJECT_ROOT / "main.py"
    if not entry.is_file():
        fail(f"chains run from a checkout ({entry} is missing): python main.py ...")
    runpy.run_path(str(entry), run_name="__main__")


def fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(2)


def precheck_overrides(argv: list[str] | None = None) -> None:
    """Name a mistyped `stages.<stage>.<key>=...` override and the valid keys.

    Hydra alone answers such a typo with 'use +key=value to append', which is the wrong advice
    for a typo; we compose the config without those overrides and check each key against its
    stage's dataclass. Anything else is left to Hydra.
    """
    from hydra._internal.utils import get_args_parser
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        args = get_args_parser().parse_args(sys.argv[1:] if argv is None else argv)
        parsed = OverridesParser.create().parse_overrides(args.overrides)
    except Exception:
        return
    _load_plugins(parsed)
    if args.config_dir or args.config_path or args.config_name:
        return
    if argv is None and _path_without_entry(parsed):
        sys.argv.append(f"model={CUSTOM_MODEL}")
    if _slurm_dry_run(parsed, args.overrides):
        sys.exit(0)
    for override in parsed:
        if override.key_or_group == "recipe" and not override.is_delete():
            for name in override.sweep_string_iterator() if override.is_sweep_override() else [override.value()]:
                message = unknown_recipe(str(name))
                if message:
                    fail(message)
    stage_keys = [o for o in parsed if o.key_or_group.startswith("stages.") and not (o.is_add() or o.is_delete())
                  and o.key_or_group.count(".") >= 2]
    if not stage_keys:
        return
    others = [o.input_line for o in parsed if o not in stage_keys and not o.is_sweep_override()
              and not o.key_or_group.startswith("hydra")]
    cfg = _compose(others)
    if cfg is not None:
        message = unknown_stage_key(cfg, [o.key_or_group for o in stage_keys]) or bad_stage_value(cfg, stage_keys)
        if message:
            fail(message)


def _load_plugins(parsed) -> None:
    """`plugins=[...]` on the command line: imported before Hydra composes, so their stage kinds' schemas
    (+stage/schema@stages.NAME=KIND) and their eval tasks' settings take overrides like the shipped ones."""
    for override in parsed:
        if override.key_or_group == "plugins" and not override.is_delete() and not override.is_sweep_override():
            try:
                plugins.load([str(v) for v in override.value() or []])
            except TunechainError as e:
                fail(str(e))
            register()


CUSTOM_MODEL = "custom"  # conf/model/custom.yaml: a model given by path alone


def _path_without_entry(parsed) -> bool:
    """`model.path=X` without `model=NAME`: the path is a model of its own, not the default entry's
    (whose name, dtype and tuning belong to the embedded model), so it gets conf/model/custom.yaml."""
    keys = {o.key_or_group for o in parsed if not o.is_delete()}
    return "model.path" in keys and "model" not in keys


def unknown_recipe(name: str) -> str | None:
    recipes = sorted(p.stem for p in (CONF_DIR / "recipe").glob("*.yaml"))
    if name in recipes:
        return None
    return f"recipe={name}: no such recipe; available: {', '.join(recipes)} (recipes/*.yaml)"


def _compose(overrides: list[str]) -> DictConfig | None:
    from hydra import compose, initialize_config_dir

    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            return compose(config_name="config", overrides=overrides)
    except Exception:
        return None  # Hydra will report the real problem with its own message


def _slurm_dry_run(parsed, overrides: list[str]) -> bool:
    """`-m hydra/launcher=submitit_slurm +dry_run=true`: Hydra would submit the jobs before any of them could
    stop at its plan, so the settings sbatch would get are printed here instead, and nothing is submitted."""
    launcher = next((o.value() for o in parsed if o.key_or_group == "hydra/launcher"), None)
    dry = any(o.key_or_group in ("dry_run", "+dry_run") and str(o.value()).lower() == "true" for o in parsed)
    if launcher != "submitit_slurm" or not dry:
        return False
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides, return_hydra_config=True)
    settings = {k: v for k, v in OmegaConf.to_container(cfg.hydra.launcher, resolve=True).items() if k != "_target_"}
    print("dry run: the Slurm settings each job would be submitted with (sbatch), nothing submitted:")
    print(OmegaConf.to_yaml(settings).rstrip())
    return True


def unknown_stage_key(cfg: DictConfig, keys: list[str]) -> str | None:
    stages = cfg.get("stages") or {}
    for key in keys:
        _, name, rest = key.split(".", 2)
        if name not in stages:
            return f"{key}: the recipe has no stage '{name}'; its stages are: {', '.join(stages) or '(none)'}"
        if not _declared(stages[name], rest):
            kind = stages[name].get("kind")
            try:
                spec = registry.get(str(kind))
            except TunechainError:
                return None
            return unknown_key_message(f"stages.{name}", rest, spec.config_cls)
    return None


def bad_stage_value(cfg: DictConfig, overrides) -> str | None:
    """A value its stage's schema cannot take (`stages.sft.learning_rate=abc`), named with what is valid, instead
    of Hydra's composition traceback (the stage nodes are typed by their schemas, pipeline/engine/configstore.py)."""
    from omegaconf.errors import ValidationError

    for override in overrides:
        if override.is_sweep_override():
            continue
        try:
            OmegaConf.update(cfg, override.key_or_group, override.value(), merge=True)
        except ValidationError as e:
            return f"{override.key_or_group}: {e.msg.strip().splitlines()[0]}"
    return None


def _declared(node, dotted: str) -> bool:
    """True if the key exists (possibly null, or ??? that the command line fills: `in` would say no)."""
    for part in dotted.split("."):
        if not isinstance(node, DictConfig) or part not in node.keys():
            return False
        node = node._get_node(part)
    return True


def _threads(hardware: DictConfig) -> None:
    threads = hardware.get("num_threads")
    if threads:
        import torch

        torch.set_num_threads(int(threads))


def run(cfg: DictConfig) -> float | None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")  # keep the trainer's progress bar, not map()'s
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    recipe = hydra_cfg.runtime.choices.get("recipe", "?")
    group = Path(hydra_cfg.sweep.dir).name if hydra_cfg.mode == RunMode.MULTIRUN else None
    try:
        _threads(cfg.hardware)
        record = run_chain(cfg, run_dir, recipe, list(hydra_cfg.overrides.task), group)
        return sweep.objective_value(cfg, record, sweep.minimizes(hydra_cfg.sweeper))
    except TunechainError as e:
        fail(str(e))
    except stopping.Interrupted as stop:  # chain.json says interrupted; exit as the signal would have ended us
        print(f"interrupted ({stop}); chain.json: {run_dir / 'chain.json'}", file=sys.stderr, flush=True)
        sys.exit(stop.exit_code)
