"""First-token latency and decode rate on a prompt of realistic length."""
from __future__ import annotations

from pipeline.backends.base import chat_prompt
from pipeline.data.datasets import load
from pipeline.evaluation.common import prompt_tokenizer
from dataclasses import dataclass
from pipeline.evaluation.registry import EvalRun, task
from pipeline.ranges import at_least


@dataclass
class SpeedSettings:
    new_tokens: int = at_least(1, 64, help="tokens generated in each streamed, timed generation")
    prompt_tokens: int = at_least(1, 512, help="prompt length (worked examples before the question)")
    repeats: int = at_least(1, 3, help="timed generations; the median is reported")


@task("speed", order=10, headlines=("first_token_s", "decode_tokens_per_s"), reads=("math",), settings=SpeedSettings)
def run(ev: EvalRun) -> dict:
    """Each the median of `settings.speed.repeats` streamed generations (after one warm-up) of a prompt
    about `settings.speed.prompt_tokens` long: worked examples, then a question."""
    import statistics

    cfg, backend = ev.cfg, ev.backend
    settings: SpeedSettings = cfg.settings.speed
    tokenizer = prompt_tokenizer(backend, ev.ctx)
    room = backend.context_length - settings.new_tokens - 8 if backend.context_length else settings.prompt_tokens
    prompt, prompt_tokens = speed_prompt(tokenizer, load(cfg.math, "gsm8k"), min(settings.prompt_tokens, room))
    backend.timed(prompt, 2)  # warm-up: first-call allocations are not latency
    runs = [backend.timed(prompt, settings.new_tokens) for _ in range(settings.repeats)]
    return {"first_token_s": round(statistics.median(r.first_token_s for r in runs), 4),
            "decode_tokens_per_s": round(statistics.median(r.decode_tokens_per_s for r in runs), 2),
            "speed_new_tokens": runs[0].new_tokens, "speed_prompt_tokens": prompt_tokens,
            "speed_repeats": len(runs)}


def speed_prompt(tokenizer, records: list[dict], target_tokens: int) -> tuple[str, int]:
    """A chat prompt of about `target_tokens` tokens: solved problems as earlier turns, then one question."""
    question, solved = records[0]["question"], records[1:]
    messages: list[dict] = []
    for record in solved:
        candidate = messages + [{"role": "user", "content": record["question"]},
                                {"role": "assistant", "content": record["answer"]}]
        text = tokenizer.apply_chat_template(candidate + [{"role": "user", "content": question}], tokenize=False,
                                             add_generation_prompt=True)
        if len(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]) > target_tokens:
            break
        messages = candidate
    prompt = tokenizer.apply_chat_template(messages + [{"role": "user", "content": question}], tokenize=False,
                                           add_generation_prompt=True) if messages else chat_prompt(tokenizer, question)
    return prompt, len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
