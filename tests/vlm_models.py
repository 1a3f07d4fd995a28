"""Tiny random copies of the vision-language architectures people fine-tune, for the test suite.

`build_tiny_vlm(arch, out)` writes a folder that loads offline with AutoModelForImageTextToText and
AutoProcessor: a randomly initialised model (text hidden 64, 2 layers; vision hidden 32, 1 layer,
32-px images), the embedded SentencePiece tokenizer plus the arch's image tokens, a ChatML chat
template that places the arch's image placeholder, and a generation config that stops on <|im_end|>.
Image processors are the PIL variants: torchvision is not installed here. Processors that take a video
processor (Qwen3-VL, Qwen3.5) load through `load_processor` here; mistral3's PixtralProcessor cannot be
built or loaded without torchvision (its folder is written as files). Not built: smolvlm (its processor
needs num2words and a torchvision video processor) and gemma4 (video processor and audio feature extractor).
"""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from pipeline.models.vision import image_only, without_torchvision

ROOT = Path(__file__).resolve().parent.parent
EMBEDDED = ROOT / "embedded" / "model"

# Where the pieces live in each model (AutoModelForImageTextToText), and a LoRA regex (peft matches a
# string target_modules with re.fullmatch) that wraps the language model's q/k/v/o/gate/up/down
# projections only. Checked by tests/test_vlm_archs.py.
def _paths(layers: str, vision: str, projector: str) -> dict:
    lora = re.escape(layers) + r"\.\d+\.(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)"
    return dict(layers=layers, vision=vision, projector=projector, lora=lora)


ARCH_PATHS = {
    "idefics3": _paths("model.text_model.layers", "model.vision_model", "model.connector"),
    "llava": _paths("model.language_model.layers", "model.vision_tower", "model.multi_modal_projector"),
    # Qwen's patch merger sits inside the vision tower (plus deepstack mergers in Qwen3-VL).
    "qwen3_vl": _paths("model.language_model.layers", "model.visual", "model.visual.merger"),
    # Qwen3.5's linear-attention layers have no q/k/v/o (in_proj_qkv, in_proj_z, in_proj_a/b, out_proj
    # under linear_attn): this regex leaves them out, as the q/k/v/o/gate/up/down recipes do.
    "qwen3_5": _paths("model.language_model.layers", "model.visual", "model.visual.merger"),
    "gemma3": _paths("model.language_model.layers", "model.vision_tower", "model.multi_modal_projector"),
    "mistral3": _paths("model.language_model.layers", "model.vision_tower", "model.multi_modal_projector"),
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


def load_processor(folder):
    """AutoProcessor, or for a video-capable processor where torchvision is missing, its image-only copy."""
    from transformers import AutoProcessor

    try:
        return AutoProcessor.from_pretrained(folder)
    except ImportError as error:
        return without_torchvision(folder, error)


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

    from tokenizers import AddedToken

    grid = [f"<row_{i + 1}_col_{j + 1}>" for i in range(6) for j in range(6)]
    tok = _tokenizer(extra=["<fake_token_around_image>", "<image>", "<global-img>", "<end_of_utterance>", *grid])
    # llama.cpp lays out Idefics3 images with a "\n\n" token before the overview (it looks the piece up in the
    # vocabulary); the SentencePiece vocabulary has none, so it is added, as SmolVLM's BPE vocabulary has it.
    tok.add_tokens([AddedToken("\n\n", normalized=False, special=False)])
    scale = 2  # the connector's pixel shuffle folds scale**2 patches into one token
    # text_config.architectures: llama.cpp's converter maps the language model by it (as SmolVLM's config has it)
    cfg = Idefics3Config(text_config=_text_config(tok, "llama", architectures=["VLlama3ForCausalLM"]),
                         vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                            num_attention_heads=2, image_size=IMAGE, patch_size=PATCH),
                         scale_factor=scale, image_token_id=tok.convert_tokens_to_ids("<image>"),
                         pad_token_id=tok.pad_token_id)
    # Images of 2 x IMAGE px split into 2 x 2 tiles and an overview, as llama.cpp always lays them out (it adds
    # tiles even for an image of one tile's size, where transformers would not split): so both agree.
    images = Idefics3ImageProcessorPil(do_image_splitting=True, size={"longest_edge": 2 * IMAGE},
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


# Qwen's video processor settings, saved for where torchvision can load them (untested here).
_QWEN_VIDEO = dict(video_processor_type="Qwen3VLVideoProcessor", patch_size=PATCH, merge_size=2, temporal_patch_size=2,
                   size={"shortest_edge": IMAGE * IMAGE, "longest_edge": 4 * IMAGE * IMAGE})


def _qwen_vl(arch: str):
    """Qwen3-VL and Qwen3.5 share the processor, the image processor and the vision placeholder."""
    from transformers import (Qwen2VLImageProcessorPil, Qwen3_5Config, Qwen3_5ForConditionalGeneration,
                              Qwen3VLConfig, Qwen3VLForConditionalGeneration, Qwen3VLProcessor)

    tok = _tokenizer(extra=["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"])
    ids = {f"{name}_token_id": tok.convert_tokens_to_ids(f"<|{token}|>") for name, token in
           (("image", "image_pad"), ("video", "video_pad"), ("vision_start", "vision_start"),
            ("vision_end", "vision_end"))}
    # Multimodal RoPE: the rotary half is split over (time, height, width); the sections must sum to it.
    vision = dict(depth=1, hidden_size=32, intermediate_size=64, num_heads=2, patch_size=PATCH,
                  spatial_merge_size=2, temporal_patch_size=2, out_hidden_size=TEXT["hidden_size"],
                  num_position_embeddings=(IMAGE // PATCH) ** 2)
    if arch == "qwen3_vl":
        text = _text_config(tok, "qwen3_vl_text", head_dim=16,
                            rope_parameters=dict(rope_type="default", rope_theta=10000.0, mrope_section=[4, 2, 2],
                                                 mrope_interleaved=True))
        cfg = Qwen3VLConfig(text_config=text, vision_config=dict(vision, deepstack_visual_indexes=[0]), **ids)
        model = Qwen3VLForConditionalGeneration(cfg)
    else:  # one Gated DeltaNet (linear attention) layer and one full attention layer, as 3:1 in the real ones
        text = _text_config(tok, "qwen3_5_text", head_dim=16, layer_types=["linear_attention", "full_attention"],
                            linear_key_head_dim=16, linear_value_head_dim=16, linear_num_key_heads=2,
                            linear_num_value_heads=4,
                            rope_parameters=dict(rope_type="default", rope_theta=10000.0, partial_rotary_factor=0.5,
                                                 mrope_section=[2, 1, 1], mrope_interleaved=True))
        cfg = Qwen3_5Config(text_config=text, vision_config=vision, **ids)
        model = Qwen3_5ForConditionalGeneration(cfg)
    pixels = IMAGE * IMAGE
    images = Qwen2VLImageProcessorPil(patch_size=PATCH, merge_size=2, temporal_patch_size=2,
                                      size={"shortest_edge": pixels, "longest_edge": pixels})
    proc = image_only(Qwen3VLProcessor, _QWEN_VIDEO)(image_processor=images, tokenizer=tok,
                            chat_template=chat_template("<|vision_start|><|image_pad|><|vision_end|>"))
    return model, proc


def _gemma3():
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration, Gemma3ImageProcessorPil, Gemma3Processor

    tok = _tokenizer(named={"boi_token": "<start_of_image>", "eoi_token": "<end_of_image>",
                            "image_token": "<image_soft_token>"})
    per_image = 4  # the projector average-pools the 4x4 patch grid to 2x2 soft tokens
    text = _text_config(tok, "gemma3_text", head_dim=16, query_pre_attn_scalar=16, sliding_window=64,
                        layer_types=["sliding_attention", "full_attention"])
    cfg = Gemma3Config(text_config=text,
                       vision_config=dict(model_type="siglip_vision_model", hidden_size=32, intermediate_size=64,
                                          num_hidden_layers=1, num_attention_heads=2, image_size=IMAGE,
                                          patch_size=PATCH),
                       mm_tokens_per_image=per_image, boi_token_index=tok.boi_token_id,
                       eoi_token_index=tok.eoi_token_id, image_token_index=tok.image_token_id)
    images = Gemma3ImageProcessorPil(size={"height": IMAGE, "width": IMAGE}, do_pan_and_scan=False)
    # The template places <start_of_image>; the processor expands it to boi + soft tokens + eoi.
    proc = Gemma3Processor(image_processor=images, tokenizer=tok, image_seq_length=per_image,
                           chat_template=chat_template("<start_of_image>"))
    return Gemma3ForConditionalGeneration(cfg), proc


class _Files:
    """A processor's saved form, for a processor class that cannot be built here."""

    def __init__(self, tokenizer, image_processor, template: str, config: dict):
        self.tokenizer, self.image_processor, self.template, self.config = tokenizer, image_processor, template, config

    def save_pretrained(self, out):
        self.tokenizer.save_pretrained(out)
        (Path(out) / "chat_template.jinja").write_text(self.template)
        image = {**self.image_processor.to_dict(), "image_processor_type": type(self.image_processor).__name__}
        (Path(out) / "processor_config.json").write_text(json.dumps({**self.config, "image_processor": image}, indent=2))


def _mistral3():
    from transformers import Mistral3Config, Mistral3ForConditionalGeneration, PixtralImageProcessorPil

    tok = _tokenizer(extra=["[IMG]", "[IMG_BREAK]", "[IMG_END]"])
    # 3 vision layers, not 1: llama.cpp's --mmproj maps multi_modal_projector.linear_{1,2} by block
    # index, and the block count it uses is the vision tower's.
    cfg = Mistral3Config(text_config=_text_config(tok, "mistral", head_dim=16, sliding_window=None),
                         vision_config=dict(model_type="pixtral", hidden_size=32, intermediate_size=64,
                                            num_hidden_layers=3, num_attention_heads=2, image_size=IMAGE,
                                            patch_size=PATCH, head_dim=16),
                         image_token_index=tok.convert_tokens_to_ids("[IMG]"), spatial_merge_size=2,
                         vision_feature_layer=-1)
    # Images are cut to whole merged patches (patch x merge), so every row of tokens merges cleanly.
    images = PixtralImageProcessorPil(size={"longest_edge": IMAGE}, patch_size={"height": 2 * PATCH, "width": 2 * PATCH})
    # PixtralProcessor needs torchvision even to import (processing_pixtral imports the torchvision image
    # processor), so it is written as files: the folder loads with AutoProcessor where torchvision is.
    proc = _Files(tok, images, chat_template("[IMG]"), dict(processor_class="PixtralProcessor", patch_size=PATCH,
                                                           spatial_merge_size=2, image_token="[IMG]",
                                                           image_break_token="[IMG_BREAK]", image_end_token="[IMG_END]"))
    return Mistral3ForConditionalGeneration(cfg), proc



ARCHS = ("idefics3", "llava", "qwen3_vl", "qwen3_5", "gemma3", "mistral3")
BUILDERS = {"idefics3": _idefics3, "llava": _llava, "qwen3_vl": lambda: _qwen_vl("qwen3_vl"),
            "qwen3_5": lambda: _qwen_vl("qwen3_5"), "gemma3": _gemma3, "mistral3": _mistral3}


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
