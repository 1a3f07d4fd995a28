"""Inference backends: one interface over transformers (HF folders, adapters, bnb and GPTQ
checkpoints) and llama.cpp (GGUF files), so eval and the export parity check treat every artifact
alike. The backend is picked from the artifact's kind; vLLM joins here where a GPU is present.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from .artifacts import Artifact
from .errors import PlanError


@dataclass
class Timing:
    first_token_s: float   # prompt in -> first new token out
    decode_tokens_per_s: float  # the tokens after the first, per second
    new_tokens: int


class _Clock:
    """A transformers streamer that only notes when tokens arrive (its first call is the prompt)."""

    def __init__(self):
        self.start = time.perf_counter()
        self.arrivals: list[float] = []
        self.seen_prompt = False

    def put(self, value) -> None:
        if not self.seen_prompt:
            self.seen_prompt = True
            return
        self.arrivals.append(time.perf_counter())

    def end(self) -> None:
        pass

    def timing(self) -> Timing:
        return _timing(self.start, self.arrivals)


def _timing(start: float, arrivals: list[float]) -> Timing:
    if not arrivals:
        return Timing(0.0, 0.0, 0)
    decode = arrivals[-1] - arrivals[0]
    rate = (len(arrivals) - 1) / decode if decode > 0 else 0.0
    return Timing(round(arrivals[0] - start, 4), round(rate, 2), len(arrivals))


@dataclass
class Generation:
    text: str              # the new text, special tokens removed
    token_ids: list[int]   # the new tokens, without the stop token
    stopped: bool          # True: ended at an end-of-generation token; False: hit max_new_tokens


class Backend(Protocol):
    name: str
    load_seconds: float
    context_length: int | None   # the longest prompt + generation the model takes

    def generate(self, prompts: list[str], max_new_tokens: int, progress: str | None = None) -> list[Generation]: ...

    def nll(self, texts: list[str], max_length: int = 1024, stride: int = 512,
            progress: str | None = None) -> tuple[float, int]: ...

    def timed(self, prompt: str, new_tokens: int) -> Timing: ...

    def close(self) -> None: ...


def open_backend(artifact: Artifact, ctx, dtype: str | None = None, batch_size: int = 32) -> Backend:
    """The backend that runs `artifact` (a model, an adapter or a GGUF) on ctx.device."""
    if artifact.kind == "gguf":
        return LlamaCppBackend(gguf_file(artifact), seed=ctx.seed, device=ctx.device)
    if artifact.kind in ("model", "adapter"):
        return HFBackend(artifact, ctx, dtype, batch_size)
    raise PlanError(f"no inference backend for artifact kind '{artifact.kind}' ({artifact.path})")


def size_on_disk(artifact: Artifact) -> int:
    """Bytes of the weights an artifact needs: its GGUF file, its weight files, or an adapter plus its base."""
    if artifact.kind == "gguf":
        return gguf_file(artifact).stat().st_size
    folder = Path(artifact.path)
    if not folder.is_dir():
        return 0
    weights = sum(f.stat().st_size for f in folder.iterdir() if f.suffix in (".safetensors", ".bin", ".pt"))
    if artifact.kind == "adapter" and artifact.base_model and Path(artifact.base_model).is_dir():
        weights += size_on_disk(Artifact(kind="model", path=artifact.base_model, fingerprint=""))
    return weights


def gguf_file(artifact: Artifact) -> Path:
    path = Path(artifact.path)
    if path.is_file():
        return path
    name = artifact.meta.get("file")
    found = [path / name] if name else sorted(path.glob("*.gguf"))
    if not found or not found[0].is_file():
        raise PlanError(f"artifact {artifact.path} has no .gguf file")
    return found[0]


class HFBackend:
    """transformers: batched greedy generation with left padding."""

    name = "transformers"

    def __init__(self, artifact: Artifact, ctx, dtype: str | None, batch_size: int):
        from .models import load_causal_lm, load_tokenizer
        from .training import tokenizer_source

        started = time.time()
        self.tokenizer = load_tokenizer(tokenizer_source(artifact), ctx.model, padding_side="left")
        self.model = load_causal_lm(artifact, ctx.model, ctx.device, dtype, merge_adapter=True).eval()
        self.device = ctx.device
        self.batch_size = batch_size
        eos = self.model.generation_config.eos_token_id
        self.stop_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        self.stop_ids.add(self.tokenizer.eos_token_id)
        self.context_length = getattr(self.model.config, "max_position_embeddings", None)
        self.load_seconds = round(time.time() - started, 3)

    def generate(self, prompts: list[str], max_new_tokens: int, progress: str | None = None) -> list[Generation]:
        return hf_generate(self.model, self.tokenizer, prompts, self._fitting_batch(prompts, max_new_tokens),
                           max_new_tokens, self.device, self.stop_ids, progress)

    def _fitting_batch(self, prompts: list[str], max_new_tokens: int) -> int:
        """The configured batch, lowered where its KV cache would not fit (pipeline.memory)."""
        from .memory import ModelShape, generation_batch

        if not prompts:
            return self.batch_size
        longest = max(len(ids) for ids in self.tokenizer(prompts, add_special_tokens=False)["input_ids"])
        value_bytes = self.model.dtype.itemsize if hasattr(self.model, "dtype") else 4
        batch = generation_batch(ModelShape.from_config(self.model.config.to_dict()), longest + max_new_tokens,
                                 self.batch_size, self.device, value_bytes)
        if batch < self.batch_size:
            print(f"[eval] batch {self.batch_size} -> {batch}: the KV cache of {longest + max_new_tokens} tokens per "
                  f"prompt must fit in the memory available", flush=True)
        return batch

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
        from .perplexity import hf_nll

        limit = getattr(self.model.config, "max_position_embeddings", None) or max_length
        length = min(max_length, limit)
        with Progress(progress, len(texts), unit="window") as bar:
            return hf_nll(self.model, self.tokenizer, texts, self.device, length, min(stride, length), bar.update)

    def close(self) -> None:
        self.model = None


class Progress:
    """A progress bar (stderr) with items per second, or nothing when `label` is None."""

    def __init__(self, label: str | None, total: int, unit: str = "prompt"):
        self.bar = None
        if label is not None:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc=label, unit=unit, dynamic_ncols=True, leave=False)

    def __enter__(self) -> "Progress":
        return self

    def update(self, n: int) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.close()


def hf_generate(model, tokenizer, prompts: list[str], batch_size: int, max_new_tokens: int, device: str,
                stop_ids: set[int] | None = None, progress: str | None = None) -> list[Generation]:
    """Batched greedy generation with left padding; each result is cut at its first stop token.
    Prompts are rendered chat text that carries its own special tokens (BOS included where the
    template writes one), so the tokenizer adds none: the same ids llama.cpp gets."""
    import torch

    if stop_ids is None:
        eos = model.generation_config.eos_token_id
        stop_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else []) | {tokenizer.eos_token_id}
    results = []
    tokenizer.padding_side = "left"
    with Progress(progress, len(prompts)) as bar:
        for start in range(0, len(prompts), batch_size):
            chunk = prompts[start:start + batch_size]
            batch = tokenizer(chunk, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
            with torch.inference_mode():
                out = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False,
                                     pad_token_id=tokenizer.pad_token_id)
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


def chat_prompt(tokenizer, question: str) -> str:
    return tokenizer.apply_chat_template([{"role": "user", "content": question}], tokenize=False,
                                         add_generation_prompt=True)


class LlamaCppBackend:
    """llama.cpp through llama-cpp-python: one prompt at a time, greedy (top_k 1)."""

    name = "llama.cpp"

    def __init__(self, path: Path, seed: int = 0, n_ctx: int = 2048, n_threads: int | None = None,
                 device: str = "cpu"):
        try:
            import llama_cpp  # noqa: F401
        except ImportError:
            raise PlanError("GGUF inference needs llama-cpp-python: pip install -e '.[gguf]'") from None
        from .llama_runtime import open_llama

        started = time.time()
        self.path, self.device = Path(path), device
        self.llm = open_llama(path, device, n_ctx=n_ctx, seed=seed, logits_all=False, n_threads=n_threads)
        self.context_length = min(n_ctx, self.llm._model.n_ctx_train() or n_ctx)
        self.load_seconds = round(time.time() - started, 3)

    def _is_end(self, token: int) -> bool:
        import llama_cpp

        return bool(llama_cpp.llama_vocab_is_eog(self.llm._model.vocab, token))

    def tokenize(self, text: str) -> list[int]:
        """A rendered chat prompt carries the template's own special tokens (Llama 3's begins with
        <|begin_of_text|>): parse them and add none, as the transformers backend and llama.cpp's
        chat server do, so no prompt starts with two BOS."""
        return self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)

    def generate(self, prompts: list[str], max_new_tokens: int, progress: str | None = None) -> list[Generation]:
        results = []
        with Progress(progress, len(prompts)) as bar:
            for prompt in prompts:
                ids, stopped = [], False
                for token in self.llm.generate(self.tokenize(prompt), top_k=1, top_p=1.0, min_p=0.0, temp=0.0,
                                               repeat_penalty=1.0, reset=True):
                    if self._is_end(token):
                        stopped = True
                        break
                    ids.append(token)
                    if len(ids) >= max_new_tokens:
                        break
                text = self.llm.detokenize(ids, special=False).decode("utf-8", errors="replace")
                results.append(Generation(text, ids, stopped))
                bar.update(1)
        return results

    def timed(self, prompt: str, new_tokens: int) -> Timing:
        """One streamed greedy generation of exactly `new_tokens` tokens (end-of-generation ignored)."""
        self.llm.reset()  # no prompt prefix reused from an earlier call: the prefill is part of the latency
        start, arrivals = time.perf_counter(), []
        for _ in self.llm.generate(self.tokenize(prompt), top_k=1, top_p=1.0, min_p=0.0, temp=0.0,
                                   repeat_penalty=1.0, reset=True):
            arrivals.append(time.perf_counter())
            if len(arrivals) >= new_tokens:
                break
        return _timing(start, arrivals)

    def nll(self, texts: list[str], max_length: int = 1024, stride: int = 512,
            progress: str | None = None) -> tuple[float, int]:
        """The same sliding windows as the transformers backend; logits of one window at a time."""
        import numpy as np

        from .llama_runtime import open_llama
        from .perplexity import windows

        trained = self.llm._model.n_ctx_train()
        length = min(max_length, trained) if trained > 0 else max_length
        scorer = open_llama(self.path, self.device, n_ctx=length + 8, logits_all=True)
        total, count = 0.0, 0
        with Progress(progress, len(texts), unit="text") as bar:
            for text in texts:
                # plain text: the tokens the GGUF's own rules add (BOS where add_bos), as transformers does
                ids = scorer.tokenize(text.encode("utf-8"), add_bos=True, special=False)
                for window in windows(ids, length, min(stride, length)):
                    scorer.reset()
                    scorer.eval(window.ids)
                    logits = np.asarray(scorer.scores[window.first_scored - 1:len(window.ids) - 1], dtype=np.float64)
                    logits -= logits.max(axis=1, keepdims=True)
                    log_probs = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
                    targets = window.ids[window.first_scored:]
                    total -= float(log_probs[np.arange(len(targets)), targets].sum())
                    count += len(targets)
                bar.update(1)
        return total, count

    def close(self) -> None:
        self.llm = None
