"""QLoRA on CPU (bitsandbytes >= 0.50 runs NF4 there): a real 4-bit base, a LoRA that learns,
the quantization recorded in the manifest, and plan-time refusals with the alternative."""
import json
from pathlib import Path

import pytest
from conftest import compose, tiny_overrides

from pipeline.engine.plan import build_plan
from pipeline.engine.runner import run_chain
from pipeline.engine.store import Store
from pipeline.errors import ConfigError, PlanError
from pipeline.stages.train.qlora import QLoRAConfig

pytest.importorskip("bitsandbytes")


def _qlora_overrides(model: Path) -> list[str]:
    sft_free = [o.replace("stages.sft.", "stages.qlora.") for o in tiny_overrides(model)]
    return ["recipe=qlora", *sft_free, "data.sft.limit=64", "stages.qlora.max_steps=12",
            "stages.qlora.learning_rate=3e-3", "~stages.eval_base", "stages.eval_tuned.compare_with=null"]


def test_qlora_trains_an_adapter_on_a_4bit_base(tiny_llama, tmp_path):
    cfg = compose(_qlora_overrides(tiny_llama) + [f"paths.store={tmp_path / 'store'}"])
    record = run_chain(cfg, tmp_path / "run", "qlora", [], None)
    qlora = record["stages"][0]
    assert record["status"] == "done"
    assert qlora["metrics"]["loss_last"] < qlora["metrics"]["loss_first"]
    assert qlora["metrics"]["peak_memory_mb"] > 0 and qlora["metrics"]["peak_memory_of"] == "process_rss"
    manifest = json.loads((Path(qlora["artifact"]) / "artifact.json").read_text())
    assert manifest["kind"] == "adapter"
    assert manifest["meta"]["quantized_base"] == {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4",
                                                  "bnb_4bit_use_double_quant": True, "bnb_4bit_compute_dtype": "float32"}
    assert manifest["meta"]["optimizer"] == "adamw_torch"
    assert record["stages"][1]["metrics"]["math_n"] == 8  # the adapter evaluates like any other


def test_qlora_full_method_is_refused_at_plan_time(tmp_path):
    cfg = compose(["recipe=qlora", "stages.qlora.method=full", "logger=none"])
    with pytest.raises(ConfigError, match=r"stages.qlora.method: QLoRA trains a LoRA adapter .*use kind sft with method full"):
        build_plan(cfg, Store(tmp_path), recipe="qlora", device="cpu")


def test_old_bitsandbytes_on_cpu_is_refused_with_the_alternative(monkeypatch):
    import pipeline.stages.train.qlora as qlora

    monkeypatch.setattr(qlora, "_bitsandbytes_version", lambda where: (0, 42))
    with pytest.raises(PlanError, match=r"stages.q: bitsandbytes 0.42 cannot run 4-bit on CPU; .*kind sft with method lora"):
        QLoRAConfig().check_device("stages.q", "cpu")
    QLoRAConfig().check_device("stages.q", "cuda")  # GPUs are fine with any supported version


@pytest.mark.gpu
def test_qlora_on_gpu_uses_bf16_compute_and_a_paged_optimizer(tiny_llama, tmp_path):
    cfg = compose(_qlora_overrides(tiny_llama) + [f"paths.store={tmp_path / 'store'}", "hardware=single_gpu"])
    record = run_chain(cfg, tmp_path / "run", "qlora", [], None)
    manifest = json.loads((Path(record["stages"][0]["artifact"]) / "artifact.json").read_text())
    assert manifest["meta"]["optimizer"] == "paged_adamw_8bit"
    assert manifest["metrics"]["peak_memory_of"] == "cuda"
