"""GGUF export on the embedded model: an adapter merged and converted, greedy parity with HF, the
stop tokens and chat template checked (and fixed when wrong), the Ollama Modelfile, quantized
files, plan-time refusals, and one chain through the runner."""
import json
import os
import shutil
import types
from pathlib import Path

import pytest

pytest.importorskip("llama_cpp")

from conftest import EMBEDDED, compose  # noqa: E402

from pipeline.llama_cpp import converter, modelfile  # noqa: E402
from exports.gguf import GGUFConfig, run  # noqa: E402
from pipeline.llama_cpp.gguf_metadata import hf_expectations, read_gguf, rewrite_metadata, verify_and_fix  # noqa: E402
from pipeline.artifact import Artifact  # noqa: E402
from pipeline.data.datasets import DatasetSpec  # noqa: E402
from pipeline.engine.context import Inputs, StageContext  # noqa: E402
from pipeline.engine.store import Store  # noqa: E402
from pipeline.errors import ConfigError, PlanError  # noqa: E402
from pipeline.models.config import ModelConfig  # noqa: E402

# The converter is fetched once into TUNECHAIN_CACHE (default ~/.cache/tunechain) and reused.
MODEL = ModelConfig(name="embedded", path=str(EMBEDDED), dtype="float32")
PROMPTS = DatasetSpec(path="embedded/data/test_math.jsonl", format="gsm8k")


def _ctx(out: Path) -> StageContext:
    out.mkdir(parents=True, exist_ok=True)
    return StageContext(name="gguf", out_dir=out, run_dir=out, model=MODEL, device="cpu", seed=0, tracker=None)


def _adapter(folder: Path) -> Artifact:
    """A LoRA on the embedded model with small random B, so merging changes the weights."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(EMBEDDED, dtype=torch.float32),
                           LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"]))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.02)
    model.save_pretrained(folder)
    return Artifact(kind="adapter", path=str(folder), fingerprint="a", format="peft-lora",
                    base_model=str(EMBEDDED), stage="sft")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """The stage run on an adapter: merged, converted to f32, checked, parity on 20 prompts."""
    tmp = tmp_path_factory.mktemp("gguf")
    ctx = _ctx(tmp / "out")
    cfg = GGUFConfig(quant="f32", parity_prompts=PROMPTS, parity_limit=20, parity_max_new_tokens=32)
    artifact = run(cfg, Inputs([_adapter(tmp / "adapter")]), ctx)
    return artifact, ctx


def test_adapter_exports_to_f32_with_hf_greedy_parity(exported):
    artifact, ctx = exported
    assert artifact.kind == "gguf" and artifact.format == "gguf-f32"
    assert artifact.meta["merged"] is True and artifact.meta["merged_into"] == "original base weights"
    assert artifact.meta["file"] == "model-f32.gguf" and artifact.meta["source_dtype"] == "float32"
    assert sorted(os.listdir(ctx.out_dir)) == ["Modelfile", "model-f32.gguf", "parity.jsonl"]  # merged folder gone
    m = artifact.metrics
    assert m["parity_n"] == 20 and m["parity_backend"] == "llama.cpp"
    assert m["parity_identical"] >= 0.9, m
    # teacher-forced on the source's answers, f32 computes the same distributions: no divergence to speak of
    assert m["parity_kld_positions"] > 100 and m["parity_kld_mean"] < 1e-4 and m["parity_same_top"] >= 0.99, m
    assert m["size_mb"] > 0 and m["source_size_mb"] > 0 and 0.9 < m["compression_ratio"] < 1.1  # f32 -> f32
    assert m["convert_seconds"] > 0


def test_parity_max_kld_fails_the_stage_and_names_the_setting(tmp_path):
    from exports.parity import ParityError

    cfg = GGUFConfig(quant="q8_0", parity_prompts=PROMPTS, parity_limit=3, parity_max_new_tokens=8,
                     parity_max_kld=1e-9)
    with pytest.raises(ParityError, match=r"mean KL divergence .* above parity_max_kld 1e-09"):
        run(cfg, Inputs([Artifact(kind="model", path=str(EMBEDDED), fingerprint="", format="hf")]),
            _ctx(tmp_path / "out"))


def test_gguf_metadata_has_template_eos_and_stop_tokens(exported):
    artifact, ctx = exported
    path = ctx.out_dir / artifact.meta["file"]
    template = json.loads((EMBEDDED / "tokenizer_config.json").read_text())["chat_template"]
    found = read_gguf(path, [5, 2, 4])
    assert found["metadata"]["tokenizer.chat_template"] == template
    assert found["metadata"]["tokenizer.ggml.eos_token_id"] == "5"
    assert found["eog"] == {5: True, 2: True, 4: False}  # <|im_end|>, </s> end generation; <|im_start|> not
    assert found["add_bos"] is False
    meta = artifact.meta
    assert meta["chat_template_present"] and meta["template_style"] == "chatml"
    assert (meta["eos_token"], meta["eos_token_id"], meta["add_bos"]) == ("<|im_end|>", 5, False)
    assert (meta["stop_tokens"], meta["stop_token_ids"]) == (["<|im_end|>", "</s>"], [5, 2])
    # transformers 5 saved the merge without added_tokens_decoder and add_bos_token in tokenizer_config.json:
    # the converter got a patched copy, else <|im_start|> would be plain text and a BOS would be added
    assert meta["tokenizer_config_patched"] == ["add_bos_token", "added_tokens_decoder"]
    assert meta["metadata_fixed"] == []


def test_modelfile_for_ollama(exported):
    artifact, ctx = exported
    text = (ctx.out_dir / "Modelfile").read_text()
    assert "FROM ./model-f32.gguf\n" in text
    assert 'TEMPLATE """{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n' in text
    assert text.count("PARAMETER stop") == 2
    assert 'PARAMETER stop "<|im_end|>"\n' in text and 'PARAMETER stop "</s>"\n' in text


def test_modelfile_keeps_a_hostile_system_prompt_and_title_in_their_place():
    text = modelfile.render("m.gguf", None, ["</s>"], title='x\nFROM /etc/passwd', system='say """hi""" "bye"')
    assert 'SYSTEM "say \\"\\"\\"hi\\"\\"\\" \\"bye\\""' in text
    assert [line for line in text.splitlines() if line.startswith("FROM")] == ["FROM ./m.gguf"]


def test_modelfile_template_styles():
    llama3 = modelfile.render("m.gguf", "{{ '<|start_header_id|>' + role }}", ["<|eot_id|>"])
    assert "<|start_header_id|>{{ .Role }}<|end_header_id|>" in llama3 and 'PARAMETER stop "<|eot_id|>"' in llama3
    other = modelfile.render("m.gguf", "{{ '[INST] ' + content }}", ["</s>"])
    assert "TEMPLATE" not in other.replace("No TEMPLATE", "") and "tokenizer.chat_template" in other


def test_quantized_files_are_smaller_and_keep_the_metadata(exported, tmp_path):
    artifact, ctx = exported
    f32 = ctx.out_dir / artifact.meta["file"]
    sizes = {}
    for quant in ("q8_0", "q4_k_m"):
        converter.quantize(f32, tmp_path / f"{quant}.gguf", quant)
        sizes[quant] = (tmp_path / f"{quant}.gguf").stat().st_size
        found = read_gguf(tmp_path / f"{quant}.gguf", [5, 2])
        assert found["eog"] == {5: True, 2: True}
        assert found["metadata"]["tokenizer.chat_template"].startswith("{% for message in messages %}")
    assert sizes["q4_k_m"] < sizes["q8_0"] < 0.3 * f32.stat().st_size


def test_wrong_metadata_is_rewritten(exported, tmp_path):
    artifact, ctx = exported
    path = tmp_path / "broken.gguf"
    shutil.copy2(ctx.out_dir / artifact.meta["file"], path)
    rewrite_metadata(path, {"tokenizer.chat_template": ("string", "{{ messages }}"),
                            "tokenizer.ggml.eos_token_id": ("uint32", 3),
                            "tokenizer.ggml.add_bos_token": ("bool", True)})
    assert read_gguf(path, [5])["metadata"]["tokenizer.ggml.eos_token_id"] == "3"
    expected = hf_expectations(EMBEDDED, _ctx(tmp_path / "ctx").model)
    expected["stop_ids"].append(7)  # </tool_call>: not an end token for llama.cpp until it is the eot
    expected["tokens"][7] = "</tool_call>"
    fixed = verify_and_fix(path, expected, log=lambda _: None)
    assert fixed == ["tokenizer.chat_template", "tokenizer.ggml.add_bos_token", "tokenizer.ggml.eos_token_id",
                     "tokenizer.ggml.eot_token_id"]
    found = read_gguf(path, [5, 2, 7])
    assert found["eog"] == {5: True, 2: True, 7: True} and found["add_bos"] is False
    assert found["metadata"]["tokenizer.chat_template"] == expected["chat_template"]
    assert verify_and_fix(path, expected) == []  # a second pass has nothing to do


def _earlier(*steps):
    return {s.name: s for s in steps}


def _step(name, kind, output_kind="model", inputs=("base",)):
    return types.SimpleNamespace(name=name, kind=kind, output_kind=output_kind, input_names=list(inputs))


def test_quantized_input_is_refused_with_the_alternative():
    earlier = _earlier(_step("sft", "sft", "adapter"), _step("merge", "merge", inputs=["sft"]),
                       _step("quantize", "bnb", inputs=["merge"]), _step("eval", "eval", "eval", ["quantize"]))
    with pytest.raises(ConfigError) as e:  # implied input: the latest model, the bnb checkpoint
        GGUFConfig(parity_prompts=PROMPTS).validate("stages.gguf", earlier)
    assert "stages.gguf.inputs" in str(e.value) and "'quantize' is a bnb checkpoint" in str(e.value)
    assert "inputs: [merge]" in str(e.value)
    GGUFConfig(parity_prompts=PROMPTS, inputs=["merge"]).validate("stages.gguf", earlier)  # the fix works
    earlier["int4"] = _step("int4", "gptq", inputs=["merge"])
    with pytest.raises(ConfigError, match="gptq"):
        GGUFConfig(parity_prompts=PROMPTS, inputs=["int4"]).validate("stages.gguf", earlier)


def test_unknown_quant_names_the_key_at_plan_time(tmp_path):
    from pipeline.engine.plan import build_plan

    cfg = compose(["recipe=quickstart", "logger=none", "+stage@stages.export=gguf", "stages.export.quant=Q4_K_M"])
    with pytest.raises(ConfigError) as e:
        build_plan(cfg, Store(tmp_path), recipe="quickstart", device="cpu")
    assert "stages.export.quant" in str(e.value) and "'q4_k_m'" in str(e.value) and "q8_0" in str(e.value)


def test_missing_llama_cpp_or_converter_fails_at_plan_time(monkeypatch):
    cfg = GGUFConfig(parity_prompts=PROMPTS)
    monkeypatch.setattr(converter, "converter_dir", lambda: (_ for _ in ()).throw(PlanError("no sdist")))
    with pytest.raises(PlanError, match="stages.gguf: no sdist"):
        cfg.check_device("stages.gguf", "cpu")
    monkeypatch.setitem(__import__("sys").modules, "llama_cpp", None)
    with pytest.raises(PlanError, match=r"pip install -e '\.\[gguf\]'"):
        cfg.check_device("stages.gguf", "cpu")


def test_base_to_gguf_chain_through_the_runner(exported, tmp_path):
    from pipeline.engine.runner import run_chain

    overrides = ["recipe=quickstart", "logger=none", "hardware.num_threads=1", "~stages.eval_base", "~stages.sft",
                 "~stages.eval_tuned", "+stage@stages.gguf=gguf", "stages.gguf.parity_limit=5",
                 "stages.gguf.parity_max_new_tokens=16", f"paths.store={tmp_path / 'store'}"]
    record = run_chain(compose(overrides), tmp_path / "run", "quickstart", overrides, None)
    assert record["status"] == "done"
    (gguf,) = record["stages"]
    assert gguf["inputs"] == ["base"] and gguf["status"] == "done"
    folder = Path(gguf["artifact"])
    manifest = json.loads((folder / "artifact.json").read_text())
    assert manifest["format"] == "gguf-q8_0" and manifest["meta"]["merged"] is False
    assert (folder / "model-q8_0.gguf").is_file() and (folder / "Modelfile").is_file()
    card = (folder / "README.md").read_text()  # its model card (tests/test_model_card.py), parity with its n
    assert "library_name: gguf" in card and "| parity_identical |" in card and card.count("| 5 |") >= 3
    assert gguf["metrics"]["parity_n"] == 5 and gguf["metrics"]["compression_ratio"] > 3
    # q8_0 loses a little: more than f32's nothing, far less than a nat per token
    assert 1e-6 < gguf["metrics"]["parity_kld_mean"] < 0.05 and gguf["metrics"]["parity_same_top"] >= 0.9, gguf
    f32 = exported[1].out_dir / "model-f32.gguf"
    assert (folder / "model-q8_0.gguf").stat().st_size < 0.3 * f32.stat().st_size
