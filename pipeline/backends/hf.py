"""The transformers backend: HF folders, adapters (merged on load), bnb and GPTQ checkpoints;
batched greedy generation with left padding."""
from __future__ import annotations

import time

from pipeline.artifact import Artifact
from pipeline.backends.base import Generation, Progress, Timing, _Clock
from pipeline.backends.perplexity import hf_nll
from pipeline.errors import PlanError
from pipeline.models.loading import is_vision, load_causal_lm, load_processor, load_tokenizer
from pipeline.models.memory import ModelShape, generation_batch


class HFBackend:
    """transformers: batched greedy generation with left padding."""

    name = "transformers"

    def __init__(self, artifact: Artifact, ctx, dtype: str | None, batch_size: int):
        started = time.time()
        self.processor = None  # a vision-language model's: it renders image prompts
        if is_vision(ctx.model, artifact.model_under()):
            self.processor = load_processor(artifact.tokenizer_dir(), ctx.model, padding_side="left")
            self.tokenizer = self.processor.tokenizer
        else:
            self.tokenizer = load_tokenizer(artifact.tokenizer_dir(), ctx.model, padding_side="left")
        self.model = load_causal_lm(artifact, ctx.model, ctx.device, dtype, merge_adapter=True).eval()
        self.device = ctx.device
        self.batch_size = batch_size
        eos = self.model.generation_config.eos_token_id
        self.stop_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        self.stop_ids.add(self.tokenizer.eos_token_id)
        self.context_length = getattr(self.model.config, "max_position_embeddings", None)
        self.load_seconds = round(time.time() - started, 3)

    def generate(self, prompts: list[str], max_new_tokens: int, progress: str | None = None,
                 images: list[list] | None = None) -> list[Generation]:
        """Greedy answers; `images`: each prompt's PIL images, in the order of its image placeholders."""
        if images is not None and self.processor is None:
            raise PlanError(f"{self.model.name_or_path} is not a vision-language model: it cannot take images")
        return hf_generate(self.model, self.processor if images is not None else self.tokenizer, prompts,
                           self._fitting_batch(prompts, max_new_tokens), max_new_tokens, self.device, self.stop_ids,
                           progress, images)

    def _fitting_batch(self, prompts: list[str], max_new_tokens: int) -> int:
        """The configured batch, lowered where its KV cache would not fit (pipeline.models.memory)."""
        if not prompts:
            return self.batch_size
        longest = max(len(ids) for ids in self.tokenizer(prompts, add_special_tokens=False)["input_ids"])
        longest += self.image_tokens(prompts[0])
        value_bytes = self.model.dtype.itemsize if hasattr(self.model, "dtype") else 4
        batch = generation_batch(ModelShape.from_config(self.model.config.to_dict()), longest + max_new_tokens,
                                 self.batch_size, self.device, value_bytes)
        if batch < self.batch_size:
            print(f"[eval] batch {self.batch_size} -> {batch}: the KV cache of {longest + max_new_tokens} tokens per "
                  f"prompt must fit in the memory available", flush=True)
        return batch

    def image_tokens(self, prompt: str) -> int:
        """The tokens the processor expands a prompt's image placeholders into (0 for a text model)."""
        seq = getattr(self.processor, "image_seq_len", None) or getattr(self.processor, "num_image_tokens", None)
        token = getattr(self.processor, "image_token", None)
        return int(seq) * prompt.count(token) if seq and token else 0

    def timed(self, prompt: str, new_tokens: int) -> Timing:
        """One streamed greedy generation of exactly `new_tokens` tokens (EOS ignored)."""
        import torch

        clock = _Clock()
        batch = self.tokenizer([prompt], return_tensors="pt", add_special_tokens=False).to(self.device)
        with torch.inference_mode():
            self.model.generate(**batch, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                                pad_token_id=self.tokenizer.pad_token_id, streamer=clock)
        return clock.timing()

    def nll(self, texts: list[str], max_length: int = 1024, stride: int = 512,
            progress: str | None = None) -> tuple[float, int]:
        limit = getattr(self.model.config, "max_position_embeddings", None) or max_length
        length = min(max_length, limit)
        with Progress(progress, len(texts), unit="window") as bar:
            return hf_nll(self.model, self.tokenizer, texts, self.device, length, min(stride, length), bar.update)

    def log_probs(self, ids: list[int], first: int):
        """Log-softmax of the predictions of tokens `first`.. of `ids` (float32 numpy, one row per position);
        only those positions' logits are made."""
        import torch

        keep = len(ids) - first + 1  # positions first-1 .. len-1; the last predicts nothing in `ids`
        with torch.inference_mode():
            logits = self.model(input_ids=torch.tensor([ids], device=self.device), logits_to_keep=keep).logits
            return torch.log_softmax(logits[0, -keep:-1].float(), dim=-1).cpu().numpy()

    def close(self) -> None:
        self.model = None


def hf_generate(model, tokenizer, prompts: list[str], batch_size: int, max_new_tokens: int, device: str,
                stop_ids: set[int] | None = None, progress: str | None = None,
                images: list[list] | None = None, sampling: dict | None = None) -> list[Generation]:
    """Batched greedy generation with left padding (`sampling`: generate()'s temperature, top_k, top_p to
    sample instead); each result is cut at its first stop token.
    Prompts are rendered chat text that carries its own special tokens (BOS included where the
    template writes one), so the tokenizer adds none: the same ids llama.cpp gets. With `images`,
    `tokenizer` is the model's processor, which expands each prompt's image placeholders."""
    import torch

    processor = tokenizer if images is not None else None
    tokenizer = getattr(tokenizer, "tokenizer", tokenizer)
    if stop_ids is None:
        eos = model.generation_config.eos_token_id
        stop_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else []) | {tokenizer.eos_token_id}
    results = []
    tokenizer.padding_side = "left"
    with Progress(progress, len(prompts)) as bar:
        for start in range(0, len(prompts), batch_size):
            chunk = prompts[start:start + batch_size]
            if processor is not None:
                batch = processor(text=chunk, images=images[start:start + batch_size], return_tensors="pt",
                                  padding=True, add_special_tokens=False).to(device)
                batch["pixel_values"] = batch["pixel_values"].to(model.dtype)  # the processor gives float32
            else:
                batch = tokenizer(chunk, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
            with torch.inference_mode():
                out = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=sampling is not None,
                                     **(sampling or {}), pad_token_id=tokenizer.pad_token_id)
            for row in out[:, batch["input_ids"].shape[1]:].tolist():
                ids, stopped = [], False
                for token in row:
                    if token in stop_ids:
                        stopped = True
                        break
                    ids.append(token)
                results.append(Generation(tokenizer.decode(ids, skip_special_tokens=True), ids, stopped))
            bar.update(len(chunk))
    return results
