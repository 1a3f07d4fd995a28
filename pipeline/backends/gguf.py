"""The llama.cpp backend (llama-cpp-python): GGUF files, one prompt at a time, greedy."""
from __future__ import annotations

import time
from pathlib import Path

from pipeline.backends.base import Generation, Progress, Timing, _timing
from pipeline.llama_cpp.runtime import open_llama
from pipeline.backends.perplexity import windows
from pipeline.errors import PlanError


class LlamaCppBackend:
    """llama.cpp through llama-cpp-python: one prompt at a time, greedy (top_k 1)."""

    name = "llama.cpp"

    def __init__(self, path: Path, seed: int = 0, n_ctx: int = 2048, n_threads: int | None = None,
                 device: str = "cpu", mmproj: Path | None = None, processor=None):
        """`mmproj`: the image projector GGUF of a vision-language model; `processor`: its HF processor, which
        renders image prompts (its image placeholder becomes llama.cpp's media marker)."""
        try:
            import llama_cpp  # noqa: F401
        except ImportError:
            raise PlanError("GGUF inference needs llama-cpp-python: pip install -e '.[gguf]'") from None
        started = time.time()
        self.path, self.device = Path(path), device
        self.llm = open_llama(path, device, n_ctx=n_ctx, seed=seed, logits_all=False, n_threads=n_threads)
        self.context_length = min(n_ctx, self.llm._model.n_ctx_train() or n_ctx)
        self.processor, self.projector, self._scorer = processor, None, None
        if mmproj is not None:
            from pipeline.llama_cpp.multimodal import Projector

            self.projector = Projector(Path(mmproj), self.llm, self.llm.n_threads, use_gpu=device == "cuda")
        self.load_seconds = round(time.time() - started, 3)

    def _is_end(self, token: int) -> bool:
        import llama_cpp

        return bool(llama_cpp.llama_vocab_is_eog(self.llm._model.vocab, token))

    def tokenize(self, text: str) -> list[int]:
        """A rendered chat prompt carries the template's own special tokens (Llama 3's begins with
        <|begin_of_text|>): parse them and add none, as the transformers backend and llama.cpp's
        chat server do, so no prompt starts with two BOS."""
        return self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)

    def generate(self, prompts: list[str], max_new_tokens: int, progress: str | None = None,
                 images: list[list] | None = None) -> list[Generation]:
        if images is not None:
            return self._generate_with_images(prompts, images, max_new_tokens, progress)
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

    def _generate_with_images(self, prompts: list[str], images: list[list], max_new_tokens: int,
                              progress: str | None) -> list[Generation]:
        if self.projector is None or self.processor is None:
            raise PlanError(f"{self.path.name}: a GGUF without its mmproj file takes no images")
        placeholder = self.processor.image_token
        results = []
        with Progress(progress, len(prompts)) as bar:
            for prompt, pictures in zip(prompts, images):
                text = prompt.replace(placeholder, self.projector.marker)
                ids, stopped = self.projector.greedy(text, [png_bytes(p) for p in pictures], max_new_tokens,
                                                     self._is_end)
                results.append(Generation(self.llm.detokenize(ids, special=False).decode("utf-8", errors="replace"),
                                          ids, stopped))
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

    def log_probs(self, ids: list[int], first: int):
        """Log-softmax of the predictions of tokens `first`.. of `ids` (the transformers backend's measure),
        from a second context that keeps every position's logits."""
        import numpy as np

        if self._scorer is None:
            self._scorer = open_llama(self.path, self.device, n_ctx=self.context_length, logits_all=True)
        if len(ids) > self.context_length:
            raise PlanError(f"{self.path.name}: {len(ids)} tokens to score, more than its context "
                            f"{self.context_length}")
        self._scorer.reset()
        self._scorer.eval(ids)
        logits = np.asarray(self._scorer.scores[first - 1:len(ids) - 1], dtype=np.float64)
        logits -= logits.max(axis=1, keepdims=True)
        return (logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))).astype(np.float32)

    def close(self) -> None:
        self._scorer = None
        if self.projector is not None:
            self.projector.close()
        self.llm = None


def png_bytes(image) -> bytes:
    """A PIL image as PNG bytes (lossless: llama.cpp decodes the same pixels the HF processor got)."""
    import io

    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
