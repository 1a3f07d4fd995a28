"""GRPO: the built-in rewards on hand-written completions, user rewards by dotted path, plan-time
refusal of a bad reward path, a few real GRPOTrainer steps on a tiny random model, and (slow) the
sft_grpo recipe's acceptance numbers on the embedded model."""
import json
from pathlib import Path

import pytest
from conftest import compose, read_chain, run_main

from pipeline.engine.plan import build_plan
from pipeline.engine.runner import run_chain
from pipeline.engine.store import Store
from pipeline.errors import ConfigError
from pipeline.stages.train.online_rl import reward_curve
from pipeline.training import rewards


def _chat(text):
    return [{"role": "assistant", "content": text}]


def test_correctness_compares_the_final_number_with_the_answer():
    completions = ["3 + 5 = 8\n#### 8", _chat("3 + 5 = 8\n#### 8"), "#### 9", "She has 1,200 now.", "no number",
                   "1,200 apples"]
    answers = ["8", "8", "8", "1200", "4", None]
    assert rewards.correctness(completions, answer=answers) == [1.0, 1.0, 0.0, 1.0, 0.0, None]
    assert rewards.correctness(["#### 7"], answer=["... 3 + 4 = 7\n#### 7"]) == [1.0]  # GSM8K-style answers too


def test_format_rewards_the_marker_and_stopping_after_it():
    completions = ["3 + 5 = 8\n#### 8", "#### 8\n", "#### 8\nTom has 4 pens. How many", "The answer is 8", _chat("#### -2")]
    assert rewards.answer_format(completions) == [1.0, 1.0, 0.5, 0.0, 1.0]


def test_json_valid():
    completions = ['{"name": "Ann", "age": 3}', '```json\n[1, 2]\n```', '{"name": "Ann",', '42', 'plain text']
    assert rewards.json_valid(completions) == [1.0, 1.0, 0.0, 0.0, 0.0]


def test_length_penalty_in_tokens_and_characters():
    ids = [[1] * 10, [1] * 20, [1] * 30, [1] * 100]
    assert rewards.length_penalty(["x"] * 4, completion_ids=ids, limit=20) == [0.0, 0.0, -0.5, -1.0]
    assert rewards.length_penalty(["abcd", "abcdefgh"], limit=4) == [0.0, -1.0]


def test_weights_args_and_names_reach_the_built_functions():
    specs = rewards.parse(["correctness", {"name": "length", "weight": 0.1, "args": {"limit": 2}}], "stages.g.rewards")
    funcs, weights, _ = rewards.build(specs)
    assert weights == [1.0, 0.1] and [f.__name__ for f in funcs] == ["correctness", "length"]
    assert funcs[1](prompts=["p"], completions=["abcdef"]) == [-1.0]


def test_user_reward_loads_by_dotted_path(tmp_path, monkeypatch):
    (tmp_path / "my_rewards.py").write_text(
        "def brevity(completions, scale=1.0, **kwargs):\n"
        "    return [scale / (1 + len(c)) for c in completions]\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for path in ("my_rewards:brevity", "my_rewards.brevity"):
        specs = rewards.parse([{"name": path, "weight": 0.5, "args": {"scale": 2.0}}], "stages.g.rewards")
        (fn,), weights, _ = rewards.build(specs)
        assert weights == [0.5] and fn.__name__ == "brevity"
        assert fn(prompts=["p", "p"], completions=["a", "abc"]) == [1.0, 0.5]
    assert rewards.resolve("pipeline.training.rewards:json_valid") is rewards.json_valid


@pytest.mark.parametrize("entry, message", [
    ("nope_pkg.mod:fn", r"^stages\.grpo\.rewards\[1\]: cannot import 'nope_pkg\.mod:fn' \(ModuleNotFoundError: "
                        r"No module named 'nope_pkg'\); built-ins: correctness, closeness, format, json_valid, length, tool_use$"),
    ("pipeline.training.rewards:nope", r"^stages\.grpo\.rewards\[1\]: module 'pipeline\.training\.rewards' has no function 'nope'$"),
    ("corectness", r"^stages\.grpo\.rewards\[1\]: unknown reward 'corectness'; built-ins: correctness"),
    ({"name": "format", "wieght": 2}, r"^stages\.grpo\.rewards\[1\]\.wieght: unknown key; valid keys: name, weight, args, stage$"),
])
def test_bad_reward_fails_at_plan_time_naming_its_key(entry, message, tmp_path):
    cfg = compose(["recipe=sft_grpo", "logger=none", f"stages.grpo.rewards=[correctness,{_override(entry)}]"])
    with pytest.raises(ConfigError, match=message):
        build_plan(cfg, Store(tmp_path), recipe="sft_grpo", device="cpu")


def _override(entry):
    if isinstance(entry, str):
        return entry
    return "{" + ",".join(f"{k}:{v}" for k, v in entry.items()) + "}"


@pytest.mark.parametrize("node, message", [
    ({"num_generations": 1}, r"stages\.grpo\.num_generations: 1; valid: >= 2"),
    ({"per_device_train_batch_size": 6, "num_generations": 4}, r"stages\.grpo\.per_device_train_batch_size: 6 .* "
                                                               r"multiple of num_generations \(4\)"),
    ({"use_vllm": "maybe"}, r"stages\.grpo\.use_vllm: 'maybe'; valid: auto, true, false"),
    ({"loss_type": "ppo"}, r"stages\.grpo\.loss_type: 'ppo'; valid: one of grpo, dapo"),
])
def test_bad_grpo_settings_fail_at_plan_time(node, message, tmp_path):
    cfg = compose(["recipe=sft_grpo", "logger=none"] + [f"stages.grpo.{k}={v}" for k, v in node.items()])
    with pytest.raises(ConfigError, match=message):
        build_plan(cfg, Store(tmp_path), recipe="sft_grpo", device="cpu")


def test_use_vllm_true_on_cpu_is_refused_before_training(tmp_path):
    from pipeline.errors import PlanError

    cfg = compose(["recipe=sft_grpo", "logger=none", "stages.grpo.use_vllm=true"])
    with pytest.raises(PlanError, match=r"stages\.grpo\.use_vllm: true, but vLLM needs a CUDA GPU"):
        build_plan(cfg, Store(tmp_path), recipe="sft_grpo", device="cpu")


def test_reward_curve_averages_the_first_and_last_logs():
    logs = [{"reward": r, "rewards/correctness/mean": r / 2} for r in (0.1, 0.2, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.1, 1.2)]
    logs.append({"train_loss": 0.1})  # the trainer's closing row has no reward
    curve = reward_curve(logs)
    assert curve == {"reward_start": 0.15, "reward_end": 1.15, "reward_correctness_start": 0.075,
                     "reward_correctness_end": 0.575}


def _tiny_grpo(model: Path, tmp_path, *extra):
    overrides = [f"model.path={model}", "model.name=tiny", "logger=none", "hardware.num_threads=1",
                 "recipe=sft_grpo", "~stages.eval_sft", "~stages.eval_grpo", "data.sft.limit=32",
                 "stages.sft.max_steps=2", "stages.sft.per_device_train_batch_size=4", "data.prompts.limit=16",
                 "stages.grpo.max_steps=3", "stages.grpo.num_generations=2", "stages.grpo.per_device_train_batch_size=4",
                 "stages.grpo.max_completion_length=8", "stages.grpo.learning_rate=1e-3", "stages.grpo.use_vllm=false",
                 *extra,
                 f"paths.store={tmp_path / 'store'}"]
    return run_chain(compose(overrides), tmp_path / "run", "sft_grpo", overrides, None)


def test_grpo_continues_the_sft_adapter_on_a_tiny_model(tiny_llama, tmp_path):
    record = _tiny_grpo(tiny_llama, tmp_path)
    assert record["status"] == "done"
    grpo = record["stages"][1]
    folder = Path(grpo["artifact"])
    assert (folder / "adapter_model.safetensors").is_file() and not (folder / "ref").exists()
    manifest = json.loads((folder / "artifact.json").read_text())
    assert manifest["kind"] == "adapter" and manifest["meta"]["trained"] == "continuing the input adapter"
    assert manifest["base_model"] == str(tiny_llama)
    metrics = grpo["metrics"]
    assert metrics["train_steps"] == 3 and metrics["generation"] == "transformers"
    assert {"reward_start", "reward_end", "reward_correctness_start", "reward_format_end"} <= set(metrics)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert any("rewards/correctness/mean" in r for r in rows if r["stage"] == "grpo")  # what W&B gets


def test_grpo_on_a_model_trains_a_new_lora_or_the_full_model(tiny_qwen3, tmp_path):
    record = _tiny_grpo(tiny_qwen3, tmp_path, "~stages.sft", "stages.grpo.inputs=[base]", "stages.grpo.beta=0.1")
    manifest = json.loads((Path(record["stages"][0]["artifact"]) / "artifact.json").read_text())
    assert manifest["kind"] == "adapter" and manifest["meta"]["trained"] == "new LoRA"
    full = _tiny_grpo(tiny_qwen3, tmp_path, "~stages.sft", "stages.grpo.inputs=[base]", "stages.grpo.method=full")
    assert (Path(full["stages"][0]["artifact"]) / "model.safetensors").is_file()


def test_full_grpo_from_an_adapter_starts_from_the_merged_policy(tiny_llama, tmp_path):
    record = _tiny_grpo(tiny_llama, tmp_path, "stages.grpo.method=full", "stages.grpo.beta=0.1")
    folder = Path(record["stages"][1]["artifact"])
    manifest = json.loads((folder / "artifact.json").read_text())
    assert manifest["kind"] == "model" and manifest["meta"]["trained"] == "full model"
    assert (folder / "model.safetensors").is_file() and not (folder / "_policy_start").exists()


@pytest.mark.acceptance
def test_sft_grpo_recipe_raises_accuracy_on_the_embedded_model(tmp_path):
    """Acceptance: GRPO beats its SFT start by >= 5 points on held-out arithmetic (same eval stage),
    the mean reward rises, and the whole recipe takes <= 15 minutes on 2 CPU cores (run here on
    one thread, run_main's default, so a busy machine does not decide the outcome)."""
    import time

    started = time.perf_counter()
    result = run_main(["recipe=sft_grpo", "hardware.num_threads=1"], tmp_path, timeout=1500)
    seconds = time.perf_counter() - started
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    stages = {s["name"]: s for s in read_chain(tmp_path / "run")["stages"]}
    before, after = stages["eval_sft"]["metrics"]["math_accuracy"], stages["eval_grpo"]["metrics"]["math_accuracy"]
    grpo = stages["grpo"]["metrics"]
    print(f"\nsft_grpo: {seconds:.0f}s; math accuracy {before:.1%} -> {after:.1%}; mean reward "
          f"{grpo['reward_start']:.3f} -> {grpo['reward_end']:.3f}; generation {grpo['generation']}")
    assert after - before >= 0.05, (before, after)
    assert grpo["reward_end"] > grpo["reward_start"], grpo
    assert seconds <= 15 * 60, seconds


@pytest.mark.parametrize("override, message", [
    ("stages.grpo.difficulty.samples=1", r"^stages\.grpo\.difficulty\.samples: 1 gives pass rates of 0 or 1 only"),
    ("stages.grpo.difficulty.min_pass=0.8", r"^stages\.grpo\.difficulty\.min_pass: 0\.8 must be below max_pass \(0\.5\)$"),
    ("stages.grpo.difficulty.reward=corectness", r"^stages\.grpo\.difficulty\.reward: unknown reward 'corectness'"),
])
def test_bad_difficulty_filter_fails_at_plan_time(override, message, tmp_path):
    cfg = compose(["recipe=sft_grpo", "logger=none", "stages.grpo.difficulty.samples=4",
                   "stages.grpo.difficulty.max_pass=0.5", override])
    with pytest.raises(ConfigError, match=message):
        build_plan(cfg, Store(tmp_path), recipe="sft_grpo", device="cpu")


def test_difficulty_filter_trains_only_on_prompts_the_policy_sometimes_passes(tiny_llama, tmp_path, monkeypatch):
    (tmp_path / "coin_rewards.py").write_text(  # passes about half the samples: most prompts land in (0, 1)
        "def coin(completions, **kwargs):\n    return [float(len(str(c)) % 2) for c in completions]\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    record = _tiny_grpo(tiny_llama, tmp_path, "stages.grpo.difficulty.samples=4", "stages.grpo.difficulty.pool=12",
                        "stages.grpo.difficulty.reward=coin_rewards:coin")
    grpo = record["stages"][1]
    rows = [json.loads(line) for line in (Path(grpo["artifact"]) / "difficulty.jsonl").read_text().splitlines()]
    kept = [r for r in rows if r["kept"]]
    assert len(rows) == 12 and all(0 < r["pass_rate"] < 1 for r in kept)
    assert all(r["pass_rate"] in (0.0, 1.0) for r in rows if not r["kept"])
    metrics = grpo["metrics"]
    assert metrics["difficulty_measured"] == 12 and metrics["difficulty_kept"] == len(kept) == metrics["train_records"]
    assert 0 < len(kept) < 12 or metrics["difficulty_all_pass"] + metrics["difficulty_all_fail"] == 0


def test_difficulty_filter_that_keeps_nothing_stops_saying_what_to_change(tiny_llama, tmp_path):
    with pytest.raises(RuntimeError, match=r"no prompt has a pass rate in \(0\.0, 1\.0\) .*difficulty\.jsonl"):
        _tiny_grpo(tiny_llama, tmp_path, "stages.grpo.difficulty.samples=2", "stages.grpo.difficulty.pool=4")
