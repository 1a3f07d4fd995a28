"""What real chat templates need: every assistant turn trained (or the last only), Qwen3's thinking
switch applied the same way in training, eval, the GGUF and its servers, and no double BOS when a
template writes the BOS itself (Llama 3), on the transformers and the llama.cpp backends."""
import shutil
from pathlib import Path

import pytest
from conftest import EMBEDDED, ROOT, compose

from pipeline.artifact import Artifact
from pipeline.data.chat_tokens import assistant_spans, tokenize_chat
from pipeline.engine.plan import build_plan
from pipeline.engine.store import Store
from pipeline.errors import ConfigError
from pipeline.models.config import ModelConfig
from pipeline.models.loading import load_tokenizer, with_thinking

QWEN3_STYLE = ROOT / "tests" / "data" / "qwen3_style.jinja"
LLAMA3_STYLE = ROOT / "tests" / "data" / "llama3_style.jinja"
CHAT = [{"role": "user", "content": "What is 2 + 3?"}, {"role": "assistant", "content": "2 + 3 = 5\n#### 5"},
        {"role": "user", "content": "And 4 * 6?"}, {"role": "assistant", "content": "4 * 6 = 24\n#### 24"}]


def _model(template: Path | None = None, thinking: bool | None = None) -> ModelConfig:
    return ModelConfig(name="t", path=str(EMBEDDED), chat_template=str(template) if template else None,
                       enable_thinking=thinking)


def _trained(tokenizer, messages, turns="all") -> str:
    out = tokenize_chat(tokenizer, messages, turns)
    return tokenizer.decode([i for i, m in zip(out["input_ids"], out["assistant_masks"]) if m])


def test_every_assistant_turn_is_trained_by_default_and_last_only_on_request():
    tok = load_tokenizer(str(EMBEDDED), _model())
    assert _trained(tok, CHAT) == "2 + 3 = 5\n#### 5<|im_end|>\n4 * 6 = 24\n#### 24<|im_end|>\n"
    assert _trained(tok, CHAT, "last") == "4 * 6 = 24\n#### 24<|im_end|>\n"
    single = tokenize_chat(tok, CHAT[:2])  # one turn: the same tokens trl's prompt/completion split trains
    prompt = tok(tok.apply_chat_template(CHAT[:1], tokenize=False, add_generation_prompt=True),
                 add_special_tokens=False)["input_ids"]
    assert single["assistant_masks"] == [0] * len(prompt) + [1] * (len(single["input_ids"]) - len(prompt))


def test_thinking_switch_is_part_of_the_template():
    template = QWEN3_STYLE.read_text()
    off = with_thinking(template, False)
    assert off.startswith("{%- set enable_thinking = false %}") and with_thinking(off, True).count("set enable") == 1
    assert with_thinking(off, None) == template  # null: the template as shipped
    assert with_thinking("{{ messages }}", False) == "{{ messages }}"  # no switch in it: unchanged


@pytest.mark.parametrize("thinking, opening", [(False, "<|im_start|>assistant\n<think>\n\n</think>\n\n"),
                                               (None, "<|im_start|>assistant\n"), (True, "<|im_start|>assistant\n")])
def test_qwen3_style_prompt_and_training_follow_enable_thinking(thinking, opening):
    from pipeline.backends.base import chat_prompt

    tok = load_tokenizer(str(EMBEDDED), _model(QWEN3_STYLE, thinking))
    prompt = chat_prompt(tok, "What is 2 + 3?")
    assert prompt.endswith(opening)
    text, spans = assistant_spans(tok, CHAT[:2])
    assert text.startswith(prompt)  # eval prompts are exactly the training prompts
    trained = _trained(tok, CHAT[:2])
    # thinking off: the empty think block is prompt, not trained; on: the model learns to write it
    assert trained == ("2 + 3 = 5\n#### 5" if thinking is False else "<think>\n\n</think>\n\n2 + 3 = 5\n#### 5") \
        + "<|im_end|>\n"
    # the template drops the think block of earlier turns: those are still found and trained
    assert _trained(tok, CHAT).startswith("2 + 3 = 5\n#### 5<|im_end|>")


def test_enable_thinking_for_a_template_without_the_switch_fails_at_plan_time(tmp_path):
    cfg = compose(["logger=none", "model.enable_thinking=false"])
    with pytest.raises(ConfigError, match="model.enable_thinking: False.*no enable_thinking switch"):
        build_plan(cfg, Store(tmp_path), device="cpu")


@pytest.fixture(scope="module")
def gguf_with_template(tmp_path_factory, tiny_llama):
    """The tiny Llama exported to GGUF f32 with a template and model settings of the test's choice."""
    from exports.gguf import GGUFConfig, run
    from pipeline.data.datasets import DatasetSpec
    from pipeline.engine.context import Inputs, StageContext

    def export(template: Path, thinking: bool | None = None, add_bos: bool = False):
        folder = tmp_path_factory.mktemp("model")
        shutil.copytree(tiny_llama, folder, dirs_exist_ok=True)
        if add_bos:  # transformers 5 keeps this in tokenizer.json's post-processor, not in tokenizer_config.json
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(folder)
            tokenizer.add_bos_token = True
            tokenizer.save_pretrained(folder)
        model = ModelConfig(name="tiny-test", path=str(folder), chat_template=str(template), enable_thinking=thinking)
        out = tmp_path_factory.mktemp("gguf")
        ctx = StageContext(name="gguf", out_dir=out, run_dir=out, model=model, device="cpu", seed=0, tracker=None)
        cfg = GGUFConfig(quant="f32", parity=False, parity_prompts=DatasetSpec(path="embedded/data/test_math.jsonl"))
        artifact = run(cfg, Inputs([Artifact(kind="model", path=str(folder), fingerprint="t", base_model=str(folder))]),
                       ctx)
        return artifact, model, out

    return export


def test_thinking_off_reaches_the_gguf_its_chat_server_and_the_modelfile(gguf_with_template):
    pytest.importorskip("llama_cpp")
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    from pipeline.llama_cpp.converter import metadata
    from pipeline.backends.base import chat_prompt

    artifact, model, out = gguf_with_template(QWEN3_STYLE, thinking=False)
    found = metadata(out / artifact.meta["file"])
    assert found["tokenizer.chat_template"].startswith("{%- set enable_thinking = false %}")
    assert found["general.name"] == "tiny-test"
    # llama-cpp-python's server renders chats with this formatter from the GGUF's template
    formatter = Jinja2ChatFormatter(template=found["tokenizer.chat_template"], eos_token="<|im_end|>", bos_token="<s>")
    served = formatter(messages=[{"role": "user", "content": "What is 2 + 3?"}]).prompt
    assert served == chat_prompt(load_tokenizer(model.path, model), "What is 2 + 3?")
    assert served.endswith("<think>\n\n</think>\n\n")
    modelfile = (out / "Modelfile").read_text()
    assert '<|im_start|>assistant\n<think>\n\n</think>\n\n"""' in modelfile


def test_no_double_bos_when_the_template_writes_it(gguf_with_template):
    """A Llama-3-style template starts with the BOS token and the model also says add_bos: the prompt must
    still hold one BOS on every backend (the transformers backend, llama.cpp, and llama.cpp's chat server)."""
    pytest.importorskip("llama_cpp")
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    from pipeline.llama_cpp.converter import metadata
    from pipeline.backends.base import chat_prompt
    from pipeline.backends.gguf import LlamaCppBackend

    artifact, model, out = gguf_with_template(LLAMA3_STYLE, add_bos=True)
    assert artifact.meta["add_bos"] is True
    tok = load_tokenizer(model.path, model)
    prompt = chat_prompt(tok, "What is 2 + 3?")
    hf_ids = tok(prompt, add_special_tokens=False)["input_ids"]  # what the transformers backend generates from
    assert hf_ids.count(tok.bos_token_id) == 1 and hf_ids[0] == tok.bos_token_id
    backend = LlamaCppBackend(out / artifact.meta["file"])
    assert backend.tokenize(prompt) == hf_ids
    found = metadata(out / artifact.meta["file"])
    result = Jinja2ChatFormatter(template=found["tokenizer.chat_template"], eos_token=tok.eos_token,
                                 bos_token=tok.bos_token)(messages=[{"role": "user", "content": "What is 2 + 3?"}])
    served = backend.llm.tokenize(result.prompt.encode(), add_bos=not result.added_special, special=True)
    assert served == hf_ids
    backend.close()
