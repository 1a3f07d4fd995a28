"""How sure a teacher is of the held-out answers, token by token: what a divergence to its distributions can teach.

    python scripts/teacher_confidence.py STORE/adapter/<teacher id>            # the embedded held-out math answers
    python scripts/teacher_confidence.py embedded/model --data my_test.jsonl --limit 50  # any model folder
    python scripts/teacher_confidence.py STORE/model/<teacher id> --answers STORE/eval/<student eval>/predictions.jsonl

Each held-out problem's reference answer (`question`, `answer`, as the math eval reads them) is scored teacher-forced
in the model's chat template. For each kind of answer token (digits, `####`, end of turn, the rest) it prints the
mean probability of the reference token, how often it is the top token, and the mean entropy of the distribution
(nats; a uniform one over the vocabulary has ln V). A token the teacher ranks first with a small probability is
one that greedy decoding writes and that KL/JSD to the teacher barely teaches (sft_gkd, README).

With `--answers`, an eval's per-item records (predictions.jsonl) are scored instead: the teacher on another model's
own answers (`output`), split into right and wrong ones, with the number after `####` as its own kind ("final").
That is what GKD's on-policy batches pull the student toward: where the teacher endorses a wrong answer's own final
number, a divergence to it teaches the student to finish its wrong working confidently.

With `--gguf FILE` (the same teacher exported by a gguf stage, f32 or f16), the same token ids are scored by
llama.cpp instead of transformers: an independent implementation of the figures (README, sft_gkd).
"""
from __future__ import annotations

import argparse
import json
import math
from collections import defaultdict
from pathlib import Path


def kind_of(token: str, after_marker: bool = False) -> str:
    if token.strip().isdigit():
        return "final" if after_marker else "digit"
    return token if token in ("####", "<|im_end|>") else "other"


def read_rows(args) -> list[tuple[str, str, str]]:
    """(group, question, answer): the held-out references, or another model's recorded answers by right/wrong."""
    path = Path(args.answers or args.data)
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()][:args.limit]
    if args.answers:
        return [("right " if r["correct"] else "wrong ", r["question"], r["output"]) for r in records]
    return [("", r["question"], r["answer"]) for r in records]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("artifact", help="a store folder of a model or adapter (its artifact.json says which), "
                                         "or a model folder")
    parser.add_argument("--data", default="embedded/data/test_math.jsonl")
    parser.add_argument("--answers", help="an eval's predictions.jsonl: score these answers instead of --data's")
    parser.add_argument("--limit", type=int, default=200)
    parser.add_argument("--gguf", help="score with llama.cpp on this GGUF of the same model (the tokenizer stays "
                                       "the artifact's)")
    args = parser.parse_args()

    import torch

    from pipeline.artifact import Artifact
    from pipeline.models.config import ModelConfig
    from pipeline.models.loading import load_causal_lm, load_tokenizer

    folder = Path(args.artifact)
    is_artifact = (folder / "artifact.json").is_file()
    artifact = Artifact.read(folder) if is_artifact else Artifact(kind="model", path=str(folder), fingerprint="")
    config = ModelConfig(name="teacher", path=artifact.base_model or artifact.path)
    tokenizer = load_tokenizer(artifact.tokenizer_dir(), config)
    if args.gguf:
        from pipeline.backends.gguf import LlamaCppBackend

        engine, log_probs = args.gguf, LlamaCppBackend(Path(args.gguf)).log_probs
    else:
        model = load_causal_lm(artifact, config, "cpu", merge_adapter=True).eval()

        def log_probs(ids, first):  # rows predicting ids[first:], as the backends' log_probs
            with torch.no_grad():
                return model(torch.tensor([ids])).logits[0, first - 1:-1].float().log_softmax(-1)
        engine = "transformers"
    rows = read_rows(args)
    seen = defaultdict(lambda: [0, 0.0, 0, 0.0])  # count, probability, top-1, entropy
    for group, question, answer in rows:
        prompt = tokenizer.apply_chat_template([{"role": "user", "content": question}], tokenize=False,
                                               add_generation_prompt=True)
        full = tokenizer.apply_chat_template([{"role": "user", "content": question},
                                              {"role": "assistant", "content": answer}], tokenize=False)
        start = len(tokenizer(prompt, add_special_tokens=False).input_ids)
        ids = tokenizer(full, add_special_tokens=False).input_ids
        logp = torch.as_tensor(log_probs(ids, start))
        after_marker = False
        for row, target in enumerate(ids[start:]):
            dist = logp[row]
            token = tokenizer.convert_ids_to_tokens(target)
            entry = seen[group + kind_of(token, after_marker)]
            after_marker = after_marker or token == "####"
            entry[0] += 1
            entry[1] += float(dist[target].exp())
            entry[2] += int(dist.argmax()) == target
            entry[3] += float(-(dist.exp() * dist).sum())
            if token == "<|im_end|>":
                break  # the template's newline after the turn is not the answer's
    print(f"{artifact.path} ({engine}): {len(rows)} answers of {args.answers or args.data}; vocabulary {len(tokenizer)} "
          f"(uniform entropy {math.log(len(tokenizer)):.2f} nats)")
    print(f"{'answer token':<18} {'count':>6} {'p(reference)':>13} {'top-1':>7} {'entropy':>8}")
    for kind, (count, probability, top, entropy) in sorted(seen.items()):
        print(f"{kind:<18} {count:>6} {probability / count:>13.3f} {top / count:>7.1%} {entropy / count:>8.2f}")


if __name__ == "__main__":
    main()
