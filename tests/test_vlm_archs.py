"""Each tiny VLM from tests/vlm_models.py behaves like the real checkpoint family: it loads with the
Auto classes, renders image chats, generates, round-trips through save/reload, and takes a LoRA SFT
step (trl) that touches only the language model, then merges and reloads."""
from __future__ import annotations

import math
import re

import pytest

from tests.vlm_models import ARCH_PATHS, BUILDERS, EMBEDDED, build_tiny_vlm, load_processor

torch = pytest.importorskip("torch")
torch.set_num_threads(1)

ARCHS = sorted(BUILDERS)
COLOURS = ["red", "green", "blue", "white"]


def _image(colour="red"):
    from PIL import Image

    return Image.new("RGB", (40, 48), colour)  # not square and not 32 px: the processor must resize


def _chat(colour="red"):
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What colour?"}]}]


def _has_torchvision():
    import importlib.util

    return importlib.util.find_spec("torchvision") is not None


def _load(folder, arch=None):
    from transformers import AutoModelForImageTextToText

    if arch == "mistral3" and not _has_torchvision():
        pytest.skip("PixtralProcessor needs torchvision (test_mistral3_model_without_processor covers the model)")
    processor = load_processor(folder)
    # The tokenizer is the embedded one, whatever class the arch's AutoTokenizer rules pick on reload.
    from transformers import AutoTokenizer

    text = "<|im_start|>user\nHello world, what colour?<|im_end|>\n"
    reference = AutoTokenizer.from_pretrained(EMBEDDED)
    if arch == "qwen3_5":  # transformers loads every qwen3_5 tokenizer as its byte-level Qwen3_5Tokenizer, which
        # reads this SentencePiece vocabulary its own way; a real Qwen3.5 ships that tokenizer. Consistent ids suffice.
        assert processor.tokenizer(text).input_ids == AutoTokenizer.from_pretrained(folder)(text).input_ids
        return AutoModelForImageTextToText.from_pretrained(folder).eval(), processor
    assert processor.tokenizer(text).input_ids == reference(text).input_ids
    assert processor.tokenizer.decode(reference(text).input_ids) == text
    return AutoModelForImageTextToText.from_pretrained(folder).eval(), processor


def _inputs(processor, colour="red"):
    text = processor.apply_chat_template(_chat(colour), add_generation_prompt=True, tokenize=False)
    return processor(text=[text], images=[[_image(colour)]], return_tensors="pt")


@pytest.fixture(scope="module", params=ARCHS)
def tiny_vlm(request, tmp_path_factory):
    return request.param, build_tiny_vlm(request.param, tmp_path_factory.mktemp(f"tiny-{request.param}"))


def test_template_renders_strings_parts_and_generation_prompt(tiny_vlm):
    arch, folder = tiny_vlm
    _, processor = _load(folder, arch)
    plain = processor.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True,
                                          tokenize=False)
    assert plain == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    chat = _chat() + [{"role": "assistant", "content": [{"type": "text", "text": "red"}]}]
    text = processor.apply_chat_template(chat, tokenize=False)
    assert text.endswith("What colour?<|im_end|>\n<|im_start|>assistant\nred<|im_end|>\n")
    assert processor.image_token in text  # the placeholder the processor expands


def test_forward_generate_and_reload_give_same_logits(tiny_vlm, tmp_path):
    arch, folder = tiny_vlm
    model, processor = _load(folder, arch)
    enc = _inputs(processor)
    image_id = processor.tokenizer.convert_tokens_to_ids(processor.image_token)
    assert (enc["input_ids"] == image_id).any()
    with torch.no_grad():
        logits = model(**enc).logits
    assert logits.shape[:2] == enc["input_ids"].shape and torch.isfinite(logits).all()
    assert model.generation_config.eos_token_id == processor.tokenizer.convert_tokens_to_ids("<|im_end|>")
    out = model.generate(**enc, max_new_tokens=4, do_sample=False)
    assert out.shape[1] > enc["input_ids"].shape[1]
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    again, processor2 = _load(tmp_path, arch)
    with torch.no_grad():
        assert torch.equal(again(**_inputs(processor2)).logits, logits)


def test_attribute_paths_and_lora_regex_hit_the_language_model_only(tiny_vlm):
    arch, folder = tiny_vlm
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(folder)
    paths = ARCH_PATHS[arch]
    modules = dict(model.named_modules())
    assert all(paths[key] in modules for key in ("layers", "vision", "projector"))
    peft_model = get_peft_model(model, LoraConfig(target_modules=paths["lora"], r=4))
    wrapped = [n.removeprefix("base_model.model.") for n, m in peft_model.named_modules() if hasattr(m, "lora_A")
               and not re.search(r"lora_[AB]$", n)]
    projections = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    expected = [n for n in modules if n.startswith(paths["layers"] + ".") and n.rsplit(".", 1)[-1] in projections]
    assert sorted(wrapped) == sorted(expected)
    assert len(expected) >= 3 * len(modules[paths["layers"]])  # every layer's MLP at least


def test_one_lora_sft_step_then_merge_reload_generate(tiny_vlm, tmp_path):
    arch, folder = tiny_vlm
    from datasets import Dataset
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    model, processor = _load(folder, arch)
    rows = [{"prompt": _chat(c), "completion": [{"role": "assistant", "content": [{"type": "text", "text": c}]}],
             "images": [_image(c)]} for c in COLOURS]
    args = SFTConfig(output_dir=str(tmp_path / "sft"), max_steps=2, per_device_train_batch_size=2, report_to=[],
                     use_cpu=True, save_strategy="no", logging_steps=1, max_length=None, learning_rate=1e-3,
                     dataloader_num_workers=0)
    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=processor,
                         peft_config=LoraConfig(target_modules=ARCH_PATHS[arch]["lora"], r=4, lora_alpha=8))
    batch = next(iter(trainer.get_train_dataloader()))  # the images reach the model, expanded in the text
    assert "pixel_values" in batch
    assert (batch["input_ids"] == processor.tokenizer.convert_tokens_to_ids(processor.image_token)).any()
    result = trainer.train()
    assert math.isfinite(result.training_loss)
    trained = [n for n, p in trainer.model.named_parameters() if p.requires_grad]
    layers = ARCH_PATHS[arch]["layers"]
    assert trained and all(layers in n and "lora_" in n for n in trained)  # vision tower and projector frozen

    merged = trainer.model.merge_and_unload()
    merged.save_pretrained(tmp_path / "merged")
    processor.save_pretrained(tmp_path / "merged")
    again, processor2 = _load(tmp_path / "merged", arch)
    assert not any("lora_" in n for n, _ in again.named_parameters())
    enc = _inputs(processor2)
    assert again.generate(**enc, max_new_tokens=4, do_sample=False).shape[1] > enc["input_ids"].shape[1]


def test_mistral3_model_without_processor(tmp_path):
    """The Mistral3 model, its tokenizer and its PIL image processor work here even where the
    processor cannot: the [IMG] rows are laid out by hand (2x2 merged tokens for a 32-px image)."""
    from transformers import AutoImageProcessor, AutoModelForImageTextToText, AutoTokenizer

    folder = build_tiny_vlm("mistral3", tmp_path / "m")
    model = AutoModelForImageTextToText.from_pretrained(folder).eval()
    tok, images = AutoTokenizer.from_pretrained(folder), AutoImageProcessor.from_pretrained(folder)
    pixels = images(_image(), return_tensors="pt")
    img, row, end = tok.convert_tokens_to_ids(["[IMG]", "[IMG_BREAK]", "[IMG_END]"])
    prompt = tok.apply_chat_template(_chat(), add_generation_prompt=True, tokenize=False)
    assert prompt.startswith("<|im_start|>user\n[IMG]What colour?<|im_end|>")
    ids = tok(prompt.replace("[IMG]", "[IMG][IMG][IMG_BREAK][IMG][IMG][IMG_END]"), return_tensors="pt").input_ids
    assert (ids == img).sum() == 4 and (ids == row).sum() == 1 and (ids == end).sum() == 1
    with torch.no_grad():
        logits = model(input_ids=ids, pixel_values=pixels["pixel_values"], image_sizes=pixels["image_sizes"]).logits
    assert torch.isfinite(logits).all()
    out = model.generate(input_ids=ids, pixel_values=pixels["pixel_values"], image_sizes=pixels["image_sizes"],
                         max_new_tokens=4, do_sample=False)
    assert out.shape[1] > ids.shape[1]
