"""ORPO (Odds Ratio Preference Optimization, Hong et al. 2024) with trl's ORPOTrainer: SFT on the
chosen answers plus an odds-ratio term that pushes them above the rejected ones, in one stage and
with no reference model (one model in memory, against DPO's two).

    python main.py recipe=sft_orpo                 # after the quickstart's SFT
    python main.py recipe=sft_orpo '~stages.sft' stages.orpo.inputs=[base]   # from the base, as the paper does

`beta` is the paper's lambda, the weight of the odds-ratio term. After training the held-out pairs are
scored: reward margin (beta times the log-probability gap) and the share of pairs ranked right.
"""
from __future__ import annotations

from dataclasses import dataclass

from pipeline.artifact import Artifact
from pipeline.engine.context import Inputs, StageContext
from pipeline.engine.registry import TRAINING_LIBRARIES, stage
from pipeline.ranges import positive, setting
from pipeline.stages.train.sft import trained_kind
from pipeline.stages.train.reference_free import ReferenceFree, train_on_pairs


@dataclass
class ORPOConfig(ReferenceFree):
    kind: str = setting("orpo", "the stage kind")
    beta: float = positive(0.1, help="lambda: weight of the odds-ratio term beside the SFT loss on chosen")


@stage("orpo", config=ORPOConfig, consumes={"model", "adapter"}, produces=trained_kind,
       libraries=TRAINING_LIBRARIES, distributed=True)
def run(cfg: ORPOConfig, inputs: Inputs, ctx: StageContext) -> Artifact:
    """SFT plus odds-ratio preference on the pairs, no reference; the adapter (or model) and its held-out margin."""
    from trl.experimental.orpo import ORPOConfig as TrlORPOConfig
    from trl.experimental.orpo import ORPOTrainer

    return train_on_pairs(cfg, inputs, ctx, ORPOTrainer, TrlORPOConfig, {"beta": cfg.beta},
                          f"ORPO lambda {cfg.beta}")
