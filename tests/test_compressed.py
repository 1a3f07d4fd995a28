"""compressed-tensors exports with llm-compressor (exports/compressed.py) on CPU: FP8 dynamic and W4A16 (GPTQ)
of the embedded model, saved compressed, reloaded with transformers' from_pretrained(folder) alone and compared
with the source; the plan-time refusals. The exports need llm-compressor (exports/compressed.py: INSTALL)."""
import json
from pathlib import Path

import pytest
from conftest import EMBEDDED, compose

from exports import compressed
from exports.compressed import CompressedConfig
from pipeline.artifact import Artifact
from pipeline.data.datasets import DatasetSpec
from pipeline.engine.context import Inputs, StageContext
from pipeline.engine.plan import build_plan
from pipeline.engine.store import Store
from pipeline.errors import ConfigError, PlanError
from pipeline.models.config import ModelConfig

MODEL = ModelConfig(name="embedded", path=str(EMBEDDED))
SOURCE = Artifact(kind="model", path=str(EMBEDDED), fingerprint="base", format="hf", base_model=str(EMBEDDED),
                  stage="base")


@pytest.fixture(scope="module", params=["fp8_dynamic", "w4a16"])
def exported(request, tmp_path_factory) -> tuple[str, Artifact]:
    pytest.importorskip("llmcompressor", reason=compressed.INSTALL)
    import torch

    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp(request.param)
    ctx = StageContext(name=request.param, out_dir=out, run_dir=out, model=MODEL, device="cpu", seed=0, tracker=None)
    cfg = CompressedConfig(scheme=request.param, n_samples=16, max_seq_len=256,
                           calibration=DatasetSpec(path="embedded/data/sft_train.jsonl", format="messages"),
                           parity_prompts=DatasetSpec(path="embedded/data/test_math.jsonl", format="gsm8k"),
                           parity_limit=12, parity_max_new_tokens=24)
    cfg.check_device("stages.x", "cpu")
    return request.param, compressed.run(cfg, Inputs([SOURCE]), ctx)


def test_a_compressed_export_reloads_smaller_and_answers_like_its_source(exported):
    from transformers import AutoModelForCausalLM

    scheme, artifact = exported
    saved = json.loads((Path(artifact.path) / "config.json").read_text())["quantization_config"]
    assert saved["quant_method"] == "compressed-tensors" and artifact.format == f"compressed-{scheme}"
    model = AutoModelForCausalLM.from_pretrained(artifact.path)  # no quantization arguments
    layers = [m for m in model.modules() if hasattr(m, "quantization_scheme")]
    assert layers and all(type(m).__name__ == "Linear" for m in layers)
    m = artifact.metrics
    assert m["compression_ratio"] > (2.3 if scheme == "fp8_dynamic" else 3.0)  # fp32 source: 4x / ~8x at most
    assert m["calibration_samples"] == (0 if scheme == "fp8_dynamic" else 16)
    assert m["reload_top1_agreement"] >= 0.9 and m["parity_same_top"] >= 0.95  # teacher-forced, every position


def test_the_plan_refuses_awq_on_cpu_and_a_quantized_input(tmp_path):
    def plan(*overrides, before=()):
        cfg = compose(["recipe=lora_merge", "logger=none", *before, "+stage@stages.q=compressed", *overrides])
        return build_plan(cfg, Store(tmp_path / "store"), recipe="lora_merge", device="cpu")

    pytest.importorskip("llmcompressor", reason=compressed.INSTALL)
    with pytest.raises(PlanError, match=r"^stages\.q\.scheme: awq_w4a16 needs a GPU .*use w4a16 \(GPTQ\) instead$"):
        plan("stages.q.scheme=awq_w4a16")
    with pytest.raises(ConfigError, match=r"^stages\.q\.inputs: 'int8' is already a bnb-quantized checkpoint"):
        plan("stages.int8.inputs=[merge]", "stages.q.inputs=[int8]", before=["+stage@stages.int8=bnb_int8"])
    assert "calibration" not in " ".join(n for s in plan().steps for n in s.data_notes if n.startswith("calib"))


@pytest.mark.gpu
def test_awq_exports_on_a_gpu_and_answers_like_its_source(tmp_path):
    """AWQ W4A16 (llm-compressor's AWQModifier needs an accelerator): exported, reloaded and compared on CUDA."""
    pytest.importorskip("llmcompressor", reason=compressed.INSTALL)
    ctx = StageContext(name="awq", out_dir=tmp_path, run_dir=tmp_path, model=MODEL, device="cuda", seed=0, tracker=None)
    cfg = CompressedConfig(scheme="awq_w4a16", n_samples=16, max_seq_len=256,
                           calibration=DatasetSpec(path="embedded/data/sft_train.jsonl", format="messages"),
                           parity_prompts=DatasetSpec(path="embedded/data/test_math.jsonl", format="gsm8k"),
                           parity_limit=12, parity_max_new_tokens=24)
    cfg.check_device("stages.awq", "cuda")
    artifact = compressed.run(cfg, Inputs([SOURCE]), ctx)
    assert artifact.format == "compressed-awq_w4a16" and artifact.metrics["compression_ratio"] > 3.0
    assert artifact.metrics["reload_top1_agreement"] >= 0.9
