"""Vision-language models: telling one apart, its processor, and which of its parts a stage tunes.

A VLM folder is a transformers model whose config.json has a `vision_config` (Idefics3/SmolVLM, LLaVA,
Qwen3-VL, Qwen3.5, Gemma 3/4, Mistral 3, Llama 4); it loads with AutoModelForImageTextToText and its
AutoProcessor (tokenizer, image processor and chat template in one). The model entry's `vision` says
so for a hub model that is not downloaded yet.
"""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

# The names transformers gives a VLM's image side: the encoder and the projector into the language model.
VISION_TOWER_NAMES = ("vision_tower", "vision_model", "visual", "vision_encoder")
PROJECTOR_NAMES = ("multi_modal_projector", "connector", "merger", "embed_vision", "vision_projection")
# What a processor writes beside the tokenizer (copied into every artifact that saves a tokenizer).
PROCESSOR_FILES = ("processor_config.json", "preprocessor_config.json", "video_preprocessor_config.json",
                   "chat_template.json", "chat_template.jinja")


def folder_is_vision(folder: str | Path | None) -> bool:
    """True when `folder` holds a model whose config.json has a vision part."""
    if folder is None:
        return False
    config = Path(folder) / "config.json"
    try:
        return "vision_config" in json.loads(config.read_text())
    except (OSError, ValueError):
        return False


def copy_processor_files(source: str | Path, out_dir: str | Path) -> None:
    """The processor's own files (image processor settings, its chat template) next to a saved tokenizer."""
    for name in PROCESSOR_FILES:
        found = Path(source) / name
        if found.is_file() and not (Path(out_dir) / name).exists():
            shutil.copy2(found, Path(out_dir) / name)


def module_groups(model) -> dict[str, list[str]]:
    """The model's module names split into 'vision' (the encoder), 'projector' and 'language'."""
    groups: dict[str, list[str]] = {"vision": [], "projector": [], "language": []}
    for name, _ in model.named_modules():
        parts = name.split(".")
        if any(p in VISION_TOWER_NAMES for p in parts):
            groups["vision"].append(name)
        elif any(p in PROJECTOR_NAMES for p in parts):
            groups["projector"].append(name)
        elif name:
            groups["language"].append(name)
    return groups


def lora_target_pattern(model, targets: list[str], tune_vision: bool) -> str:
    """A peft `target_modules` regex (matched against full module names) for a VLM: the named projections
    (or every linear layer, for 'all-linear') of the language model, and of the vision encoder too when
    `tune_vision`. The projector is trained whole (modules_to_save), not through LoRA."""
    import torch

    skip = PROJECTOR_NAMES + (() if tune_vision else VISION_TOWER_NAMES)
    if targets == ["all-linear"]:
        groups = module_groups(model)
        wanted = set(groups["language"] + (groups["vision"] if tune_vision else []))
        targets = sorted({name.split(".")[-1] for name, module in model.named_modules()
                          if name in wanted and isinstance(module, torch.nn.Linear) and name != "lm_head"})
    excluded = r"(?!(?:.*\.)?(?:" + "|".join(map(re.escape, skip)) + r")\.)"
    leaf = "(?:" + "|".join(map(re.escape, targets)) + ")"
    return rf"^{excluded}(?!lm_head$).*\.{leaf}$"


def projector_modules(model) -> list[str]:
    """The top projector modules' names (for peft's modules_to_save), shortest first."""
    names = [n for n in module_groups(model)["projector"] if n.split(".")[-1] in PROJECTOR_NAMES]
    return sorted(names, key=len)[:1]


def image_token_counter(folder: str | Path | None):
    """A function (width, height) -> the language-model tokens one image of that size becomes, read from the
    processor's saved settings; None where the family is not known here (the plan then counts none)."""
    if folder is None:
        return None
    folder = Path(folder)
    settings: dict = {}
    for name in ("preprocessor_config.json", "processor_config.json"):
        try:
            loaded = json.loads((folder / name).read_text())
        except (OSError, ValueError):
            continue
        settings.update(loaded.get("image_processor", {}))
        settings.update({k: v for k, v in loaded.items() if k != "image_processor"})
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return None
    if "image_seq_len" in settings:  # Idefics3 / SmolVLM: a global image, plus tiles when splitting
        return _tiled(settings)
    if "image_seq_length" in settings or "mm_tokens_per_image" in config:  # Gemma 3: a fixed count
        count = int(settings.get("image_seq_length") or config["mm_tokens_per_image"])
        return lambda width, height: count
    if "merge_size" in settings and "patch_size" in settings:  # Qwen2/2.5/3-VL, Qwen3.5: by the image's size
        return _qwen(settings)
    vision = config.get("vision_config", {})
    if "image_size" in vision and "patch_size" in vision:  # LLaVA-style: one token per patch
        count = (int(vision["image_size"]) // int(vision["patch_size"])) ** 2
        return lambda width, height: count
    return None


def _tiled(settings: dict):
    import math

    seq = int(settings["image_seq_len"])
    split = settings.get("do_image_splitting", False)
    tile = (settings.get("max_image_size") or {}).get("longest_edge")
    longest = (settings.get("size") or {}).get("longest_edge")

    def count(width: int, height: int) -> int:
        if not split or not tile:
            return seq
        scale = min(1.0, longest / max(width, height)) if longest else 1.0
        tiles = math.ceil(height * scale / tile) * math.ceil(width * scale / tile)
        return seq * (tiles + 1) if tiles > 1 else seq

    return count


def _qwen(settings: dict):
    """Qwen-VL's smart resize: each side to a multiple of patch x merge, the area kept within its pixel bounds;
    one token per merged patch."""
    import math

    factor = int(settings["patch_size"]) * int(settings["merge_size"])
    size = settings.get("size") or {}
    low = int(settings.get("min_pixels") or size.get("shortest_edge") or 56 * 56)
    high = int(settings.get("max_pixels") or size.get("longest_edge") or 28 * 28 * 1280)

    def count(width: int, height: int) -> int:
        h, w = max(factor, round(height / factor) * factor), max(factor, round(width / factor) * factor)
        if h * w > high:
            scale = math.sqrt(height * width / high)
            h, w = math.floor(height / scale / factor) * factor, math.floor(width / scale / factor) * factor
        elif h * w < low:
            scale = math.sqrt(low / (height * width))
            h, w = math.ceil(height * scale / factor) * factor, math.ceil(width * scale / factor) * factor
        return max(1, (h // factor) * (w // factor))

    return count


def image_only(processor_cls, video: dict | None = None):
    """`processor_cls` without its video processor. Processors that take one (Qwen3-VL, Qwen3.5, SmolVLM,
    Gemma 4) can be neither built nor loaded where torchvision is missing, even for images only; images
    never reach the video part. The subclass keeps the parent's name and saves `video` (the video
    processor's settings) as the real one would, so its folder loads with AutoProcessor where torchvision is."""
    def get_attributes(cls):
        return [name for name in processor_cls.get_attributes() if name != "video_processor"]

    def to_dict(self):
        return {**processor_cls.to_dict(self), **({"video_processor": video} if video else {})}

    return type(processor_cls.__name__, (processor_cls,), {"get_attributes": classmethod(get_attributes),
                                                          "to_dict": to_dict, "__module__": __name__})


def without_torchvision(folder: str | Path, error: ImportError):
    """A saved processor loaded image-only after AutoProcessor failed for lack of torchvision (its video part)."""
    import transformers

    if "torchvision" not in str(error).lower():
        raise error
    config = json.loads((Path(folder) / "processor_config.json").read_text())
    cls = image_only(getattr(transformers, config["processor_class"]), config.get("video_processor"))
    return cls.from_pretrained(folder)
