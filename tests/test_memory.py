"""The memory planner: the terms a stage's memory follows from (weights, optimizer, activations, logits,
KV cache), lengths measured on the stage's data, the measured peak beside the estimate, and a warning
with remedies before a run that will not fit."""
import pytest

from conftest import EMBEDDED, artifacts, compose, tiny_overrides

from pipeline.engine.plan import build_plan, memory_warnings
from pipeline.engine.store import Store
from pipeline.models import memory
from pipeline.models.memory import ModelShape, Workload, estimate

# SmolLM2-135M's shape (conf/model/smollm2-135m.yaml): what the README's planner figures are for
SMOL = ModelShape(n_params=134_515_008, layers=30, hidden=576, intermediate=1536, heads=9, kv_heads=3, head_dim=64,
                  vocab=49_152)


def test_parameter_count_from_safetensors_headers_matches_torch():
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(EMBEDDED)
    assert memory.count_parameters(EMBEDDED) == sum(p.numel() for p in model.parameters())
    shape = ModelShape.from_folder(EMBEDDED)
    assert (shape.layers, shape.hidden, shape.vocab, shape.kv_heads) == (4, 256, 3072, 2)


def test_lora_parameter_count_matches_peft():
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(EMBEDDED), LoraConfig(
        r=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert memory.lora_parameters(ModelShape.from_folder(EMBEDDED), 16) == trainable


def test_training_memory_grows_with_tokens_and_vocabulary():
    small = estimate(Workload(kind="train", batch=8, length=128), SMOL, "float32", "cpu")
    double = estimate(Workload(kind="train", batch=16, length=128), SMOL, "float32", "cpu")
    per_token = (double - small) / (8 * 128)
    logits = memory.LOGIT_COPIES * SMOL.vocab * 4 * memory.BACKWARD_FACTOR
    assert per_token > logits  # activations on top of the logits
    wider = estimate(Workload(kind="train", batch=8, length=128), ModelShape(**{**SMOL.__dict__, "vocab": 151_936}),
                     "float32", "cpu")
    assert wider - small == int(8 * 128 * memory.LOGIT_COPIES * (151_936 - 49_152) * 4 * memory.BACKWARD_FACTOR)
    full = estimate(Workload(kind="train", method="full", batch=8, length=128), SMOL, "float32", "cpu")
    assert full - small > 11 * SMOL.n_params  # fp32: a gradient and two AdamW moments (12 bytes) per weight
    checkpointed = estimate(Workload(kind="train", batch=8, length=128, gradient_checkpointing=True), SMOL,
                            "float32", "cpu")
    assert checkpointed < small


def test_generation_memory_is_weights_and_kv_cache():
    work = Workload(kind="generate", batch=32, new_tokens=256, prompt_length=128)
    got = estimate(work, SMOL, "float32", "cuda")  # on a GPU: the allocator's peak, no process runtime
    kv = memory.kv_cache_bytes(SMOL, 32, 384, 4)
    assert got == SMOL.n_params * 4 + int(kv * memory.GENERATION_TRANSIENT + 32 * SMOL.vocab * 4)
    assert estimate(work, SMOL, "float32", "cpu") - got == memory.RUNTIME_CPU_BYTES


def test_plan_measures_training_lengths_on_the_data(tmp_path):
    """The shipped chats are far shorter than max_length: the plan's SFT estimate uses their length."""
    cfg = compose(["logger=none", "stages.sft.max_length=4096"])
    measured = build_plan(cfg, Store(tmp_path), recipe="quickstart", device="cpu").steps[1].memory_bytes
    worst = estimate(Workload(kind="train", batch=16, length=4096), ModelShape.from_folder(EMBEDDED), "float32", "cpu")
    assert measured < worst / 5


def test_runner_records_the_measured_peak_beside_the_estimate(tiny_llama, tmp_path):
    from pipeline.engine.runner import run_chain

    cfg = compose([*tiny_overrides(tiny_llama), f"paths.store={tmp_path / 's'}"])
    record = run_chain(cfg, tmp_path / "run", "quickstart", [], None)
    for entry in record["stages"]:
        m = entry["metrics"]
        assert m["peak_memory_of"] == "process_rss" and m["peak_rss_mb"] >= m["start_rss_mb"] > 0
        assert m["planned_memory_mb"] > 0
    assert record["peak_rss_mb"] == max(e["metrics"]["peak_rss_mb"] for e in record["stages"])


def test_plan_warns_when_a_stage_cannot_fit(tmp_path, monkeypatch):
    cfg = compose(["logger=none", "stages.sft.method=full"])
    plan = build_plan(cfg, Store(tmp_path), recipe="quickstart", device="cpu")
    monkeypatch.setattr(memory, "available_bytes", lambda device: 1024)
    warnings = memory_warnings(plan)
    assert len(warnings) == 3 and "stage 'sft' may need" in warnings[1]
    assert "gradient checkpointing" in warnings[1] and "deepspeed_zero3" in warnings[1]


# A Llama-3.2-1B-like shape: where sharding decides whether full tuning fits one GPU
ONE_B = ModelShape(n_params=1_235_814_400, layers=16, hidden=2048, intermediate=8192, heads=32, kv_heads=8,
                   head_dim=64, vocab=128_256)


def test_sharding_divides_what_each_zero_stage_shards():
    work = Workload(kind="train", method="full", batch=1, length=512)
    per_gpu = {name: estimate(work, ONE_B, "bfloat16", "cuda", sharding) for name, sharding in {
        "one": None, "ddp": memory.Sharding(world=8), "zero2": memory.Sharding(world=8, zero_stage=2),
        "zero3": memory.Sharding(world=8, zero_stage=3),
        "offload": memory.Sharding(world=8, zero_stage=3, offload_optimizer=True, offload_param=True)}.items()}
    assert per_gpu["ddp"] == per_gpu["one"]  # plain DDP: every GPU holds everything
    assert per_gpu["one"] > per_gpu["zero2"] > per_gpu["zero3"] > per_gpu["offload"]
    n = ONE_B.n_params  # bf16: 2 bytes of weights, 4 of gradient, 12 of AdamW states and master copy per parameter
    assert abs(per_gpu["one"] - per_gpu["zero2"] - 7 / 8 * 16 * n) < 8
    assert abs(per_gpu["zero2"] - per_gpu["zero3"] - (2 * n - 2 * n / 8 - 2 * 2 * n / 16)) < 8
    assert memory.Sharding.from_hardware({"num_processes": 4, "num_nodes": 2, "fsdp": "full_shard"}) == \
        memory.Sharding(world=8, zero_stage=3)
    assert memory.Sharding.from_hardware({"num_processes": 2, "offload_optimizer": True,
                                          "deepspeed": {"zero_optimization": {"stage": 2}}}).offload_optimizer


def test_plan_shows_memory_per_process_and_warns_for_all_processes_on_cpu(tmp_path, monkeypatch):
    overrides = ["logger=none", "hardware=ddp", "hardware.num_processes=2", "hardware.device=cpu"]
    plan = build_plan(compose(overrides), Store(tmp_path), recipe="quickstart", device="cpu")
    sft = plan.steps[1]
    assert sft.memory_processes == 2 and " x2 " in plan.render()
    assert "memory  sft: per process; DDP: every process holds the whole model over 2" in plan.render()
    monkeypatch.setattr(memory, "available_bytes", lambda device: int(sft.memory_bytes * 1.5))  # one fits, two do not
    warnings = memory_warnings(plan)
    assert len(warnings) == 1 and "stage 'sft'" in warnings[0] and "(2 processes x" in warnings[0]


def test_an_export_that_will_not_fit_on_disk_stops_at_plan_time(tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple

    import pytest

    from pipeline.errors import PlanError

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**12, 10**12 - 1000, 1000))
    with pytest.raises(PlanError, match=r"stages\.merge: needs ~.* free in the store .*which has 1000 B"):
        build_plan(compose(["recipe=sft_to_gguf", "logger=none"]), Store(tmp_path / "store"), recipe="sft_to_gguf",
                   device="cpu")
    monkeypatch.undo()
    build_plan(compose(["recipe=sft_to_gguf", "logger=none"]), Store(tmp_path / "store"), recipe="sft_to_gguf",
               device="cpu")  # real free space: fits
    assert not artifacts(tmp_path / "store")  # planning creates no artifact


@pytest.mark.parametrize("entry, params", [("gpt-oss-20b", 20.9e9), ("qwen3-30b-a3b", 30.5e9)])
def test_a_mixture_of_experts_is_planned_whole_with_its_routed_activations(entry, params, tmp_path, monkeypatch):
    """A hub MoE entry planned on this CPU for a GPU (the hub and the GPU are the fakes): every expert's bf16
    weights, and activations of the parameters one token uses (fewer than a dense model of the same size)."""
    import pipeline.engine.plan as plan_module

    monkeypatch.setattr(plan_module, "check_available", lambda model: None)  # no hub here
    monkeypatch.setattr(plan_module, "_check_device", lambda plan: None)     # no GPU here
    monkeypatch.setattr(plan_module, "_check_disk", lambda plan: None)       # a 30B merge needs ~57 GB; not this disk

    def sft_bytes(*extra):
        cfg = compose([f"model={entry}", "recipe=lora_merge", "logger=none", *extra])
        plan = build_plan(cfg, Store(tmp_path / "store"), recipe="lora_merge", device="cuda")
        assert plan.n_params == int(params) and "memory" in plan.render()
        return plan.steps[0].memory_bytes

    routed, dense = sft_bytes(), sft_bytes("model.active_params_b=null")
    assert 2 * params < routed < dense, (routed, dense)


def test_linear_attention_layers_keep_a_fixed_state_instead_of_a_kv_cache():
    """Qwen3.5-style layers (3 Gated DeltaNet, then 1 attention): only the attention layer's cache grows with
    the tokens; each linear layer holds heads x key dim x value dim plus its convolution's last 3 inputs."""
    from pipeline.models.memory import kv_cache_bytes

    config = {"model_type": "qwen3_5_text", "hidden_size": 2048, "num_hidden_layers": 4, "num_attention_heads": 8,
              "num_key_value_heads": 2, "head_dim": 256, "intermediate_size": 6144, "vocab_size": 248320,
              "layer_types": ["linear_attention"] * 3 + ["full_attention"], "linear_num_key_heads": 16,
              "linear_num_value_heads": 32, "linear_key_head_dim": 128, "linear_value_head_dim": 128,
              "linear_conv_kernel_dim": 4}
    hybrid = ModelShape.from_config(config)
    dense = ModelShape.from_config({**config, "layer_types": ["full_attention"] * 4})
    assert (hybrid.kv_layers, dense.kv_layers, dense.state_values) == (1, 4, 0)
    assert hybrid.state_values == 3 * (32 * 128 * 128 + 3 * (2 * 16 * 128 + 32 * 128))
    assert kv_cache_bytes(hybrid, 2, 4096, 2) == kv_cache_bytes(dense, 2, 4096, 2) // 4 + 2 * hybrid.state_values * 4
