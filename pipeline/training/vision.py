"""Which parts of a vision-language model a training stage tunes. By default only the language model
learns (LoRA on its projections, or every weight for method=full); the vision encoder and the
projector that maps its features into the language model stay frozen, as LLaMA-Factory
(freeze_vision_tower, freeze_multi_modal_projector) and Axolotl do."""
from __future__ import annotations

from dataclasses import dataclass

from pipeline.models.vision import module_groups
from pipeline.ranges import setting


@dataclass
class VisionSpec:
    tune_vision_tower: bool = setting(False, "train the image encoder too (LoRA on its projections, or its weights "
                                             "for method=full)")
    tune_projector: bool = setting(False, "train the projector into the language model (whole, not through LoRA)")


def freeze_image_side(model, spec: VisionSpec) -> dict[str, int]:
    """method=full: stop gradients in the parts `spec` keeps frozen; returns the frozen parameter counts."""
    groups = module_groups(model)
    frozen = {}
    for part, keep in (("vision", spec.tune_vision_tower), ("projector", spec.tune_projector)):
        if keep:
            continue
        roots = {name for name in groups[part] if not any(name.startswith(other + ".") for other in groups[part])}
        count = 0
        for root in roots:
            for parameter in model.get_submodule(root).parameters():
                if parameter.requires_grad:
                    parameter.requires_grad_(False)
                    count += parameter.numel()
        frozen[part] = count
    return frozen
