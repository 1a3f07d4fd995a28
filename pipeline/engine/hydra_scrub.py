"""Secrets out of Hydra's own record (.hydra/config.yaml, hydra.yaml, overrides.yaml; a sweep's multirun.yaml)
on every path: a run, a dry run, a plan that fails, a sweep. Registered in conf/config.yaml (hydra.callbacks).

When Hydra writes what: run_job saves .hydra/*.yaml just before on_job_start, so that hook scrubs them before
the task function (and its plan) runs; the sweeper saves multirun.yaml after on_multirun_start and before the
first job, so each job's start scrubs it, and so does the sweep's end, and, for a sweep that fails before any
job starts (a sweep value its schema refuses), the process's exit. The filter is pipeline/redaction.py's."""
from __future__ import annotations

import atexit
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from pipeline.redaction import remember_named_variables, scrub_file

MULTIRUN_RECORD = "multirun.yaml"


def scrub_sweep(sweep_dir: Path) -> None:
    record = Path(sweep_dir) / MULTIRUN_RECORD
    if record.is_file():
        scrub_file(record)


def scrub_job(config: DictConfig) -> None:
    """The job's .hydra/*.yaml and, in a sweep, the sweep's multirun.yaml."""
    hydra = config.hydra
    if hydra.output_subdir is not None:
        for written in (Path(hydra.runtime.output_dir) / hydra.output_subdir).glob("*.yaml"):
            scrub_file(written)
    if hydra.mode == RunMode.MULTIRUN:
        scrub_sweep(Path(hydra.sweep.dir))


def _remember(config: DictConfig) -> None:
    """`api_key_env: MY_KEY` in the config: $MY_KEY's value is a secret in these files too."""
    remember_named_variables(OmegaConf.to_container(config, resolve=False))


class ScrubHydraRecord(Callback):
    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        _remember(config)
        atexit.register(scrub_sweep, Path(config.hydra.sweep.dir))  # multirun.yaml is not written yet

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        _remember(config)
        scrub_job(config)

    def on_job_end(self, config: DictConfig, **kwargs: Any) -> None:
        scrub_job(config)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        scrub_sweep(Path(config.hydra.sweep.dir))
