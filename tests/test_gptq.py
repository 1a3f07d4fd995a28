"""GPTQ export with GPTQModel on CPU: W4A16 of the embedded model calibrated on 16 of its own chats,
saved in GPTQModel's format, reloaded with transformers' from_pretrained(folder) alone, its parity
reported; and the plan-time refusals (group size that does not divide a layer, gptqmodel missing).

The export tests need gptqmodel (CPU: see INSTALL_CPU in exports/gptq.py); the refusals run without.
The source is the embedded base model (no chat format yet), so greedy parity is noisy (see
test_bnb.py); the teacher-forced next-token agreement is what is held to a bar here."""
import json
from pathlib import Path

import pytest
from conftest import EMBEDDED, compose

from exports import gptq
from exports.gptq import GPTQConfig
from pipeline.artifact import Artifact
from pipeline.data.datasets import DatasetSpec
from pipeline.engine.context import Inputs, StageContext
from pipeline.engine.plan import build_plan
from pipeline.engine.store import Store
from pipeline.engine.typed_config import typed_config
from pipeline.errors import ConfigError, PlanError
from pipeline.models.config import ModelConfig

MODEL = ModelConfig(name="embedded", path=str(EMBEDDED))
SOURCE = Artifact(kind="model", path=str(EMBEDDED), fingerprint="base", format="hf", base_model=str(EMBEDDED),
                  stage="base")


@pytest.fixture(scope="module")
def w4a16(tmp_path_factory) -> Artifact:
    pytest.importorskip("gptqmodel")
    import torch

    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("gptq") / "w4a16"
    out.mkdir()
    ctx = StageContext(name="gptq", out_dir=out, run_dir=out, model=MODEL, device="cpu", seed=0, tracker=None)
    cfg = GPTQConfig(bits=4, n_samples=16, max_seq_len=256, model_path=str(EMBEDDED),
                     calibration=DatasetSpec(path="embedded/data/sft_train.jsonl", format="messages"),
                     parity_prompts=DatasetSpec(path="embedded/data/test_math.jsonl", format="gsm8k"),
                     parity_limit=12, parity_max_new_tokens=24)
    cfg.validate("stages.gptq", {})
    cfg.check_device("stages.gptq", "cpu")
    return gptq.run(cfg, Inputs([SOURCE]), ctx)


def test_w4a16_reloads_with_transformers_from_its_folder_alone(w4a16):
    from transformers import AutoModelForCausalLM

    folder = Path(w4a16.path)
    assert w4a16.kind == "model" and w4a16.format == "gptq-w4a16"
    saved = json.loads((folder / "config.json").read_text())["quantization_config"]
    assert (saved["quant_method"], saved["bits"], saved["group_size"], saved["desc_act"]) == ("gptq", 4, 128, False)
    for name in ("model.safetensors", "tokenizer.json", "tokenizer.model", "generation_config.json", "parity.jsonl"):
        assert (folder / name).is_file(), name
    # the source's generation config, not GPTQModel's (which turns sampling on)
    assert json.loads((folder / "generation_config.json").read_text())["do_sample"] is False
    model = AutoModelForCausalLM.from_pretrained(str(folder))
    assert sum(hasattr(m, "qweight") for m in model.modules()) == 4 * 7  # every attention and MLP projection
    assert w4a16.meta["quantization"]["bits"] == 4 and w4a16.meta["quantizer"].startswith("gptqmodel ")


def test_w4a16_metrics_and_parity_are_reported(w4a16):
    m = w4a16.metrics
    assert m["calibration_samples"] == 16 and m["calibration_tokens"] > 16 * 20
    assert m["quantize_seconds"] > 0 and m["gptq_modules"] == 28 and m["gptq_loss_max"] < 0.1
    assert 4.0 < m["compression_ratio"] < 5.5, m          # seen 4.83x (15.0 -> 3.1 MB)
    assert m["reload_top1_agreement"] >= 0.9, m           # seen 0.978 on 447 positions
    assert m["parity_n"] == 12 and m["parity_backend"] == "transformers"
    for key in ("parity_identical", "parity_token_agreement", "parity_accuracy", "parity_source_accuracy"):
        assert 0.0 <= m[key] <= 1.0, key


def test_a_group_size_that_does_not_divide_a_layer_is_refused_with_the_numbers(tmp_path):
    cfg = compose(["+stage@stages.gptq=gptq", "stages.gptq.group_size=96", "logger=none"])
    with pytest.raises(ConfigError, match=r"^stages\.gptq\.group_size: 96 does not divide the input size of every "
                                          r"linear layer of \./embedded/model \(hidden_size 256, "
                                          r"num_attention_heads\*head_dim 256\); .*32, 64, 128 divide every layer"):
        build_plan(cfg, Store(tmp_path), recipe="quickstart", device="cpu")


@pytest.mark.parametrize("override, message", [
    ("stages.gptq.bits=3", r"^stages\.gptq\.bits: 3; valid: one of 4, 8$"),
    ("stages.gptq.backend=llmcompressor", r"^stages\.gptq\.backend: 'llmcompressor'; valid: gptqmodel "),
    ("stages.gptq.damp_percent=1.5", r"^stages\.gptq\.damp_percent: 1\.5; valid: \(0, 1\)$"),
])
def test_bad_settings_fail_at_plan_time(override, message, tmp_path):
    cfg = compose(["+stage@stages.gptq=gptq", override, "logger=none"])
    with pytest.raises(ConfigError, match=message):
        build_plan(cfg, Store(tmp_path), recipe="quickstart", device="cpu")


def test_yaml_calibrates_on_the_chains_chats():
    cfg = typed_config(compose(["+stage@stages.gptq=gptq", "logger=none"]).stages.gptq, GPTQConfig, "stages.gptq")
    assert (cfg.bits, cfg.group_size, cfg.damp_percent, cfg.desc_act) == (4, 128, 0.01, False)
    assert cfg.calibration.path == "embedded/data/sft_train.jsonl" and cfg.model_path == "./embedded/model"


def test_missing_gptqmodel_is_refused_with_the_install_lines(monkeypatch):
    monkeypatch.setattr(gptq, "gptqmodel_import_error", lambda: "ModuleNotFoundError: No module named 'gptqmodel'")
    with pytest.raises(PlanError, match=r"^stages\.g: kind gptq needs gptqmodel.*GPU: pip install -e '\.\[gptq\]'.*"
                                        r"pip install --no-deps gptqmodel==7\.7\.0 && pip install .*'tokenicer"):
        GPTQConfig().check_device("stages.g", "cpu")


def test_a_quantized_input_is_refused_naming_the_stage_to_read(tmp_path):
    cfg = compose(["+stage@stages.q4=bnb_nf4", "+stage@stages.gptq=gptq", "logger=none"])
    with pytest.raises(ConfigError, match=r"^stages\.gptq\.inputs: 'q4' is already a bnb-quantized checkpoint .*"
                                          r"`inputs: \[base\]`"):
        build_plan(cfg, Store(tmp_path), recipe="quickstart", device="cpu")
