"""Tiny random copies of the vision-language architectures people fine-tune, for the test suite.

`build_tiny_vlm(arch, out)` writes a folder that loads offline with AutoModelForImageTextToText and
AutoProcessor: a randomly initialised model (text hidden 64, 2 layers; vision hidden 32, 1 layer,
32-px images), the embedded SentencePiece tokenizer plus the arch's image tokens, a ChatML chat
template that places the arch's image placeholder, and a generation config that stops on <|im_end|>.
Image processors are the PIL variants: torchvision is not installed here.
"""
from __future__ import annotations

import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EMBEDDED = ROOT / "embedded" / "model"

ARCHS = ("idefics3", "llava", "qwen3_vl", "qwen3_5", "gemma3", "gemma4", "mistral3")

# Where the pieces live in each model (AutoModelForImageTextToText), and a LoRA regex that wraps the
# language model's attention and MLP projections only. Checked by tests/test_vlm_archs.py.
ARCH_PATHS = {
    "idefics3": dict(layers="model.text_model.layers", vision="model.vision_model",
                     projector="model.connector",
                     lora=r"model\.text_model\.layers\.\d+\.(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)"),
    "llava": dict(layers="model.language_model.layers", vision="model.vision_tower",
                  projector="model.multi_modal_projector",
                  lora=r"model\.language_model\.layers\.\d+\.(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)"),
}

# The text model every arch shares, so sizes and speed stay comparable.
TEXT = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=512)
IMAGE = 32  # pixels a side
PATCH = 8


def chat_template(image: str) -> str:
    """ChatML over string or list-of-parts content; an image part becomes `image`. The assistant turn
    is wrapped in {% generation %} so assistant-only loss masks work, as in the embedded template.
    A newline after a block tag is trimmed by transformers' Jinja settings, hence {{ '\\n' }}."""
    parts = ("{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for p in m['content'] %}"
             "{% if p['type'] == 'image' %}" + image + "{% elif p['type'] == 'text' %}{{ p['text'] }}"
             "{% endif %}{% endfor %}{% endif %}")
    return ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
            "{% if m['role'] == 'assistant' %}{% generation %}" + parts + "<|im_end|>{% endgeneration %}"
            "{% else %}" + parts + "<|im_end|>{% endif %}{{ '\\n' }}{% endfor %}"
            "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def _tokenizer(named: dict[str, str] | None = None, extra: list[str] | None = None):
    """The embedded tokenizer with the arch's image tokens: `named` ones become attributes the
    processors read (tokenizer.boi_token, tokenizer.image_token_id...), `extra` are plain specials."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(EMBEDDED, extra_special_tokens=dict(named or {}))
    if extra:
        tok.add_special_tokens({"extra_special_tokens": extra}, replace_extra_special_tokens=False)
    return tok


def _text_config(tok, model_type: str, **more) -> dict:
    return dict(model_type=model_type, vocab_size=len(tok), pad_token_id=tok.pad_token_id,
                eos_token_id=tok.convert_tokens_to_ids("<|im_end|>"), bos_token_id=None, **TEXT, **more)


def _idefics3():
    from transformers import Idefics3Config, Idefics3ForConditionalGeneration, Idefics3ImageProcessorPil, Idefics3Processor

    grid = [f"<row_{i + 1}_col_{j + 1}>" for i in range(6) for j in range(6)]
    tok = _tokenizer(extra=["<fake_token_around_image>", "<image>", "<global-img>", "<end_of_utterance>", *grid])
    scale = 2  # the connector's pixel shuffle folds scale**2 patches into one token
    cfg = Idefics3Config(text_config=_text_config(tok, "llama"),
                         vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                            num_attention_heads=2, image_size=IMAGE, patch_size=PATCH),
                         scale_factor=scale, image_token_id=tok.convert_tokens_to_ids("<image>"),
                         pad_token_id=tok.pad_token_id)
    images = Idefics3ImageProcessorPil(do_image_splitting=False, size={"longest_edge": IMAGE},
                                       max_image_size={"longest_edge": IMAGE})
    proc = Idefics3Processor(image_processor=images, tokenizer=tok, image_seq_len=(IMAGE // PATCH) ** 2 // scale**2,
                             chat_template=chat_template("<image>"))
    return Idefics3ForConditionalGeneration(cfg), proc


def _llava():
    from transformers import CLIPImageProcessorPil, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

    tok = _tokenizer(extra=["<image>"])
    cfg = LlavaConfig(text_config=_text_config(tok, "llama"),
                      vision_config=dict(model_type="clip_vision_model", hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=1, num_attention_heads=2, image_size=IMAGE,
                                         patch_size=PATCH, projection_dim=32),
                      image_token_index=tok.convert_tokens_to_ids("<image>"), vision_feature_layer=-1,
                      vision_feature_select_strategy="default", pad_token_id=tok.pad_token_id)
    images = CLIPImageProcessorPil(size={"shortest_edge": IMAGE}, crop_size={"height": IMAGE, "width": IMAGE})
    # CLIP adds a CLS token that the "default" strategy drops again: (32/8)**2 image tokens.
    proc = LlavaProcessor(image_processor=images, tokenizer=tok, patch_size=PATCH, num_additional_image_tokens=1,
                          vision_feature_select_strategy="default", chat_template=chat_template("<image>"))
    return LlavaForConditionalGeneration(cfg), proc


BUILDERS = {"idefics3": _idefics3, "llava": _llava}


def build_tiny_vlm(arch: str, out: Path) -> Path:
    """Write a tiny random `arch` VLM with its processor to `out`; returns `out`."""
    import torch
    from transformers import GenerationConfig

    if arch not in BUILDERS:
        raise ValueError(f"unknown VLM arch {arch!r}; known: {sorted(BUILDERS)}")
    out = Path(out)
    torch.manual_seed(0)
    model, proc = BUILDERS[arch]()
    tok = proc.tokenizer
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    model.generation_config = GenerationConfig(eos_token_id=im_end, pad_token_id=tok.pad_token_id,
                                               bos_token_id=None, do_sample=False)
    model.save_pretrained(out)
    proc.save_pretrained(out)
    shutil.copy2(EMBEDDED / "tokenizer.model", out / "tokenizer.model")  # the SentencePiece source, for converters
    return out
