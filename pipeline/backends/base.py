"""The inference backend interface: one over transformers (HF folders, adapters, bnb and GPTQ
checkpoints: backends/hf.py) and llama.cpp (GGUF files: backends/gguf.py), so eval and the
export parity check treat every artifact alike; backends/open.py picks one from the artifact's kind.
vLLM joins here where a GPU is present.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Protocol


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

    def log_probs(self, ids: list[int], first: int):
        """Next-token log-probabilities (numpy, positions x vocabulary) predicting ids[first:]."""

    def close(self) -> None: ...


class Progress:
    """A progress bar (stderr) with items per second, or nothing when `label` is None."""

    def __init__(self, label: str | None, total: int, unit: str = "prompt"):
        self.bar = None
        if label is not None:
            from tqdm.auto import tqdm  # optional: only where a bar is shown

            self.bar = tqdm(total=total, desc=label, unit=unit, dynamic_ncols=True, leave=False)

    def __enter__(self) -> "Progress":
        return self

    def update(self, n: int) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.close()


def chat_prompt(tokenizer, question: str) -> str:
    return tokenizer.apply_chat_template([{"role": "user", "content": question}], tokenize=False,
                                         add_generation_prompt=True)
