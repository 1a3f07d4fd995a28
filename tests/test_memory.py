"""The memory planner: seed 001's rules of thumb, and a warning with remedies before a run."""
from conftest import EMBEDDED, compose
from pipeline import memory
from pipeline.artifacts import Store
from pipeline.plan import build_plan, memory_warnings


def test_parameter_count_from_safetensors_headers_matches_torch():
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(EMBEDDED)
    assert memory.count_parameters(EMBEDDED) == sum(p.numel() for p in model.parameters())


def test_estimates_follow_seed_001():
    n = 8_000_000_000
    assert memory.estimate_bytes("inference", n, "bfloat16") == int(n * 2 * 1.2)   # 19.2 GB
    assert memory.estimate_bytes("lora_train", n, "bfloat16") == int(n * 2 * 1.5)
    assert memory.estimate_bytes("full_train", n, "bfloat16") > 150e9               # 16 B/param + activations


def test_plan_warns_when_a_stage_cannot_fit(tmp_path, monkeypatch):
    cfg = compose(["logger=none", "stages.sft.method=full"])
    plan = build_plan(cfg, Store(tmp_path), recipe="quickstart", device="cpu")
    monkeypatch.setattr(memory, "available_bytes", lambda device: 1024)
    warnings = memory_warnings(plan)
    assert len(warnings) == 3 and "stage 'sft' may need" in warnings[1]
    assert "gradient checkpointing" in warnings[1] and "deepspeed_zero3" in warnings[1]
