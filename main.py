"""tunechain: run a chain of stages from one Hydra config.

    python main.py                                   # the quickstart chain on the embedded model
    python main.py recipe=NAME model=NAME key=value  # any recipe in recipes/, any override
    python main.py -m recipe=quickstart stages.sft.learning_rate=1e-4,3e-4   # a sweep
    python main.py verify                            # check the stored artifacts (also: tunechain verify)
"""
import sys

import hydra
from omegaconf import DictConfig

from pipeline.engine.cli import command, precheck_overrides, run


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    return run(cfg)  # sweep.objective's value: what a searching sweeper (Optuna) optimizes


if __name__ == "__main__":
    command(sys.argv)
    precheck_overrides()
    main()
