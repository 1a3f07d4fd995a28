"""What several eval tasks share: the record limit, the prompt tokenizer, the cut-answers warning."""
from __future__ import annotations

from pipeline.models.loading import load_tokenizer

# Below this share of answers ending at an end-of-generation token, most answers were cut by the budget.
EOS_WARNING_SHARE = 0.5


def limited(records: list, limit: int | None) -> list:
    return records[:limit] if limit else records


def warn_if_cut(ctx, task: str, stopped: float, budget: int) -> None:
    """Most answers ending at the budget means the score measures the budget, not the model."""
    if stopped < EOS_WARNING_SHARE:
        ctx.log(f"warning: only {stopped:.0%} of the {task} answers ended at an end-of-generation token; the rest hit "
                f"the {budget}-token budget (raise stages.{ctx.name}.max_new_tokens.{task})")


def prompt_tokenizer(backend, ctx):
    """The tokenizer that renders chat prompts: the backend's own, or for a GGUF (which carries its template
    inside the file) the chain's base tokenizer, so every backend sees the same prompt text."""
    if getattr(backend, "tokenizer", None) is not None:
        return backend.tokenizer
    return load_tokenizer(ctx.chain["base"].path if "base" in ctx.chain else ctx.model.path, ctx.model)


def image_prompts(backend, records: list[dict], ctx) -> tuple[list[str], list[list]]:
    """Each record's chat (`prompt`, image parts included) rendered by the model's processor, and its images
    (PIL, in placeholder order) for backend.generate(..., images=...)."""
    from pipeline.data.images import load_image
    from pipeline.errors import PlanError
    from pipeline.data.images import images_in
    from pipeline.training.images import placeholders

    processor = getattr(backend, "processor", None)
    if processor is None:
        raise PlanError(f"stages.{ctx.name}: the {backend.name} backend of this model takes no images "
                        "(a vision-language model's HF folder or adapter does)")
    prompts = [processor.apply_chat_template(placeholders(r["prompt"]), tokenize=False, add_generation_prompt=True)
               for r in records]
    return prompts, [[load_image(ref) for ref in images_in(r["prompt"])] for r in records]
