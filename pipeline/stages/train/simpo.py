"""SimPO (Meng et al. 2024) with trl's CPOTrainer (`loss_type: simpo`): the reward of an answer is its
length-normalised log-probability times `beta`, and chosen must beat rejected by a margin `gamma`;
no reference model. `cpo_alpha` > 0 adds the behaviour-cloning term on chosen (CPO-SimPO).

    python main.py recipe=sft_simpo
    python main.py recipe=sft_simpo stages.simpo.beta=2.5 stages.simpo.gamma=1.0

After training the held-out pairs are scored: reward margin and the share of pairs ranked right.
"""
from __future__ import annotations

from dataclasses import dataclass

from pipeline.artifact import Artifact
from pipeline.engine.context import Inputs, StageContext
from pipeline.engine.registry import TRAINING_LIBRARIES, stage
from pipeline.ranges import at_least, positive, setting
from pipeline.stages.train.sft import trained_kind
from pipeline.stages.train.reference_free import ReferenceFree, train_on_pairs


@dataclass
class SimPOConfig(ReferenceFree):
    kind: str = setting("simpo", "the stage kind")
    beta: float = positive(2.0, help="reward scale of the mean log-probability (the paper uses 2.0-2.5)")
    gamma: float = at_least(0, 0.5, help="target reward margin between chosen and rejected")
    cpo_alpha: float = at_least(0, 0.0, help="> 0: add the NLL on chosen with this weight (CPO-SimPO)")


@stage("simpo", config=SimPOConfig, consumes={"model", "adapter"}, produces=trained_kind,
       libraries=TRAINING_LIBRARIES, distributed=True)
def run(cfg: SimPOConfig, inputs: Inputs, ctx: StageContext) -> Artifact:
    """The SimPO loss on the pairs, no reference; the adapter (or model) and its held-out margin."""
    from trl.experimental.cpo import CPOConfig, CPOTrainer

    loss = {"loss_type": "simpo", "beta": cfg.beta, "simpo_gamma": cfg.gamma, "cpo_alpha": cfg.cpo_alpha}
    return train_on_pairs(cfg, inputs, ctx, CPOTrainer, CPOConfig, loss,
                          f"SimPO beta {cfg.beta}, gamma {cfg.gamma}, cpo_alpha {cfg.cpo_alpha}")
