"""The reward stage (a one-score head on the SFT policy, trl's RewardTrainer), its model as a reward of GRPO
and RLOO, the GRPO variants as plain keys, and the plan-time errors of each."""
import json
from pathlib import Path

import pytest
import torch
from conftest import compose

from pipeline.artifact import Artifact
from pipeline.data.datasets import load
from pipeline.engine.plan import build_plan
from pipeline.engine.runner import run_chain
from pipeline.engine.store import Store
from pipeline.errors import ConfigError
from pipeline.models.config import ModelConfig
from pipeline.models.loading import load_reward_model, load_tokenizer
from pipeline.training import rewards


def _plan(tmp_path, *overrides):
    cfg = compose(["recipe=reward_rloo", "logger=none", *overrides])
    return build_plan(cfg, Store(tmp_path / "store"), recipe="reward_rloo", device="cpu")


def test_rl_stages_read_the_reward_model_after_their_policy(tmp_path):
    steps = {s.name: s for s in _plan(tmp_path).steps}
    assert steps["reward"].output_kind == "reward_model" and steps["reward"].input_names == ["sft"]
    assert steps["grpo"].input_names == ["sft", "reward"] and steps["rloo"].input_names == ["sft", "reward"]
    alone = {s.name: s for s in _plan(tmp_path, "stages.rloo.rewards=[correctness]").steps}
    assert alone["rloo"].input_names == ["sft"] and alone["rloo"].fingerprint != steps["rloo"].fingerprint
    unnamed = {s.name: s for s in _plan(tmp_path, "~stages.grpo", "~stages.eval_grpo", "stages.rloo.inputs=null",
                                        "stages.rloo.rewards=[correctness]").steps}
    assert unnamed["rloo"].input_names == ["sft"]  # the latest earlier stage is the reward model: not a policy


@pytest.mark.parametrize("override, message", [
    ("stages.rloo.rewards=[{stage:sft}]", r"^stages\.rloo\.rewards\[0\]\.stage: 'sft' is not a reward model \(it "
                                          r"produces 'adapter'\); earlier reward stages: reward$"),
    ("stages.grpo.rewards=[{stage:judge}]", r"^stages\.grpo\.rewards\[0\]\.stage: 'judge' is not a reward model \(it "
                                            r"is not an earlier stage\)"),
    ("stages.grpo.rewards=[{stage:reward,name:format}]", r"^stages\.grpo\.rewards\[0\]\.stage: the name of an earlier "
                                                         r"reward stage, alone with a weight"),
    ("stages.grpo.inputs=[reward]", r"^stages\.grpo\.inputs: the policy 'reward' is not an earlier model or adapter"),
    ("stages.grpo.loss_type=luspo", r"^stages\.grpo\.loss_type: luspo works on sequence-level ratios; set "
                                    r"importance_sampling_level: sequence$"),
    ("stages.grpo.importance_sampling_level=word", r"^stages\.grpo\.importance_sampling_level: 'word'; valid: one of "
                                                   r"token, sequence$"),
    ("stages.reward.center_rewards_coefficient=-1", r"^stages\.reward\.center_rewards_coefficient: -1\.0; valid: >= 0$"),
])
def test_bad_reward_and_rl_settings_fail_at_plan_time(override, message, tmp_path):
    with pytest.raises(ConfigError, match=message):
        _plan(tmp_path, override)


def test_closeness_gives_partial_credit_by_relative_error():
    completions = ["#### 10", "#### 9", "#### 15", "#### 40", "no number", "#### 1,000"]
    assert rewards.closeness(completions, answer=["10", "10", "10", "10", "10", "1000"]) == \
        [1.0, 0.9, 0.5, 0.0, 0.0, 1.0]
    assert rewards.closeness(["#### 1"], answer=[None]) == [None]


def test_reward_model_learns_the_pairs_and_scores_completions_for_grpo_and_rloo(tmp_path):
    """On the embedded model: held-out pairs ranked right go from chance to >= 75%, the saved scorer agrees when
    loaded on its own, and GRPO (GSPO ratios) and RLOO train with its score among their rewards."""
    overrides = ["logger=none", "hardware.num_threads=2", "recipe=reward_rloo", "~stages.eval_sft", "~stages.eval_grpo",
                 "~stages.eval_rloo", "stages.sft.max_steps=30", "stages.reward.max_steps=60",
                 "data.preference_test.limit=64", "data.prompts.limit=16", "stages.grpo.importance_sampling_level=sequence",
                 *[f"stages.{s}.{k}={v}" for s in ("grpo", "rloo") for k, v in
                   (("max_steps", 2), ("num_generations", 2), ("per_device_train_batch_size", 4),
                    ("max_completion_length", 12), ("use_vllm", "false"), ("logging_steps", 1))],
                 f"paths.store={tmp_path / 'store'}"]
    record = run_chain(compose(overrides), tmp_path / "run", "reward_rloo", overrides, None)
    assert record["status"] == "done"
    stages = {s["name"]: s for s in record["stages"]}
    scored = stages["reward"]["metrics"]
    assert abs(scored["eval_pair_accuracy_before"] - 0.5) < 0.2 and scored["eval_pair_accuracy"] >= 0.75
    assert scored["eval_score_margin"] > scored["eval_score_margin_before"] + 1
    folder = Path(stages["reward"]["artifact"])
    assert json.loads((folder / "artifact.json").read_text())["kind"] == "reward_model"

    # independent of trl: our loader and the chat template, chosen against rejected
    model_cfg = ModelConfig(name="embedded", path="./embedded/model", dtype="float32")
    scorer = load_reward_model(Artifact(kind="reward_model", path=str(folder), fingerprint=""), model_cfg, "cpu").eval()
    tokenizer = load_tokenizer(str(folder), model_cfg)
    pairs = load(compose([]).data.preference_test, "preference")[:64]

    def score(prompt, answer):
        text = tokenizer.apply_chat_template(prompt + answer, tokenize=False)
        with torch.no_grad():
            return scorer(**tokenizer(text, return_tensors="pt")).logits[0, 0].item()

    right = sum(score(p["prompt"], p["chosen"]) > score(p["prompt"], p["rejected"]) for p in pairs)
    assert right / len(pairs) == pytest.approx(scored["eval_pair_accuracy"], abs=0.05)

    for name in ("grpo", "rloo"):
        metrics = stages[name]["metrics"]
        assert metrics["train_steps"] == 2 and "reward_reward_end" in metrics and "zero_std_groups_end" in metrics
    grpo = json.loads((Path(stages["grpo"]["artifact"]) / "artifact.json").read_text())
    assert grpo["meta"]["importance_sampling_level"] == "sequence"
    assert grpo["meta"]["rewards"][-1] == {"name": "stage reward", "weight": 0.2, "args": {}}


@pytest.mark.acceptance
def test_reward_rloo_recipe_gains_with_both_methods_on_the_embedded_model(tmp_path):
    """Acceptance (README figures: reward model 33.7% -> 82.2%, GRPO +26.5, RLOO +25.0): the reward model ranks
    >= 75% of held-out pairs right, and GRPO and RLOO each beat the SFT start by >= 10 points."""
    from conftest import read_chain, run_main

    result = run_main(["recipe=reward_rloo", "hardware.num_threads=1"], tmp_path, timeout=2400)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    stages = {s["name"]: s for s in read_chain(tmp_path / "run")["stages"]}
    assert stages["reward"]["metrics"]["eval_pair_accuracy"] >= 0.75
    before = stages["eval_sft"]["metrics"]["math_accuracy"]
    for name in ("eval_grpo", "eval_rloo"):
        assert stages[name]["metrics"]["math_accuracy"] - before >= 0.10, (name, before, stages[name]["metrics"])
