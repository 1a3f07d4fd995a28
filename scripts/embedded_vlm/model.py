"""An Idefics3 model (llama.cpp's converter turns it into GGUF + mmproj) around the embedded Llama."""
from __future__ import annotations

import json
import os
import shutil

IMAGE_TOKENS = ["<fake_token_around_image>", "<image>", "<global-img>", "<end_of_utterance>"] + \
    [f"<row_{i + 1}_col_{j + 1}>" for i in range(6) for j in range(6)]
# the embedded LM's ChatML, with image parts rendered as <image> (the processor expands it)
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% if m['content'] is string %}{{ m['content'] }}"
    "{% else %}{% for p in m['content'] %}{% if p['type'] == 'image' %}<image>{% elif p['type'] == 'text' %}"
    "{{ p['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def make(lm_dir: str, img_size=64, tile=32, patch=8, scale=2, vision=None):
    """Pictures of img_size px are cut into (img_size // tile)**2 tiles plus an overview scaled to one tile,
    the layout llama.cpp's mtmd always uses for Idefics3 (it tiles even a one-tile image, where transformers
    would not): so the HF model and its GGUF + mmproj see the same prompt."""
    from tokenizers import AddedToken
    from transformers import (AutoModelForCausalLM, AutoTokenizer, Idefics3Config,
                              Idefics3ForConditionalGeneration, Idefics3ImageProcessorPil, Idefics3Processor)

    tok = AutoTokenizer.from_pretrained(lm_dir)
    # keep <|im_start|> and <|im_end|> special (skipped on decode) alongside the image tokens
    tok.add_special_tokens({"additional_special_tokens": IMAGE_TOKENS}, replace_extra_special_tokens=False)
    # llama.cpp puts a "\n\n" token before the overview and looks the piece up in the vocabulary (SmolVLM's
    # byte-level vocabulary has one; the embedded SentencePiece one does not)
    tok.add_tokens([AddedToken("\n\n", normalized=False, special=False)])
    lm = AutoModelForCausalLM.from_pretrained(lm_dir)
    vision = vision or dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4)
    cfg = Idefics3Config(text_config=lm.config.to_dict(),
                         vision_config=dict(vision, image_size=tile, patch_size=patch),
                         scale_factor=scale, image_token_id=tok.convert_tokens_to_ids("<image>"),
                         tie_word_embeddings=lm.config.tie_word_embeddings)
    model = Idefics3ForConditionalGeneration(cfg)
    model.model.text_model.load_state_dict(lm.model.state_dict())
    model.resize_token_embeddings(len(tok))
    ip = Idefics3ImageProcessorPil(do_image_splitting=True, size={"longest_edge": img_size},
                                   max_image_size={"longest_edge": tile})
    seq = (tile // patch) ** 2 // scale ** 2  # image tokens per tile
    proc = Idefics3Processor(image_processor=ip, tokenizer=tok, image_seq_len=seq, chat_template=CHAT_TEMPLATE)
    return model, proc


def save(model, proc, lm_dir: str, out: str):
    from transformers import GenerationConfig

    tok = proc.tokenizer
    ids = {t: tok.convert_tokens_to_ids(t) for t in ("<s>", "</s>", "<|im_end|>", "<pad>")}
    model.generation_config = GenerationConfig(bos_token_id=ids["<s>"], eos_token_id=[ids["<|im_end|>"], ids["</s>"]],
                                               pad_token_id=ids["<pad>"], do_sample=False)
    model.save_pretrained(out, safe_serialization=True)
    proc.save_pretrained(out)
    shutil.copy(os.path.join(lm_dir, "tokenizer.model"), out)  # llama.cpp's converter reads the sentencepiece model
    cfg_path = os.path.join(out, "config.json")
    with open(cfg_path, encoding="utf-8") as f:
        cfg = json.load(f)
    # llama.cpp picks the text model's converter from text_config.architectures
    cfg["text_config"]["architectures"] = ["VLlama3ForCausalLM"]
    with open(cfg_path, "w", encoding="utf-8") as f:
        json.dump(cfg, f, indent=2)
    for name in os.listdir(out):  # safetensors writes 0600 files
        if os.path.isfile(os.path.join(out, name)):
            os.chmod(os.path.join(out, name), 0o644)
