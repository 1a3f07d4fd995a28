"""The parity check every export runs: greedy generation on a fixed prompt set, exported model
against the model it came from. Token agreement and answer accuracy go into the export's
manifest (and so into the report); `parity.jsonl` keeps each prompt's pair of outputs. Beside
greedy identity, the teacher-forced KL divergence on the source's answers (exports/divergence.py),
as llama.cpp measures quantization loss.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Optional

from omegaconf import MISSING

from exports.divergence import SourceLogProbs, sequences
from pipeline.answers import extract_answer
from pipeline.artifact import Artifact, write_json_atomic
from pipeline.backends.base import Generation, chat_prompt
from pipeline.backends.open import open_backend
from pipeline.data.datasets import DatasetSpec, load
from pipeline.errors import TunechainError
from pipeline.hashing import hash_json
from pipeline.models.loading import is_vision, load_tokenizer
from pipeline.models.memory import Workload
from pipeline.paths import cache_root
from pipeline.ranges import at_least, between, setting
from pipeline.engine.contract import StageConfig


class ParityError(TunechainError):
    """The exported model disagrees with its source more than the stage allows."""


PARITY_PERCENT = ("parity_identical", "parity_token_agreement", "parity_image_identical", "parity_image_token_agreement",
                  "parity_same_top")  # shares of the prompts (or, same_top, of the scored positions), shown as %


@dataclass
class ParityFields(StageConfig):
    """Config fields shared by every export stage (flat, so `stages.gguf.parity_limit=20` works)."""

    parity: bool = setting(True, "false: skip the comparison")
    parity_prompts: DatasetSpec = setting(MISSING, "prompts both models answer (gsm8k records)", purpose="gsm8k")
    parity_limit: Optional[int] = at_least(1, 50, help="first N prompts (null: all)")
    parity_max_new_tokens: int = at_least(1, MISSING, help="tokens generated per prompt")
    parity_min_identical: Optional[float] = between(None, 0, 1,
                                                    help="fail the stage when fewer prompts match token for token")
    parity_kld: bool = setting(True, "also the teacher-forced KL divergence from the source on its own answers "
                                     "(llama-perplexity --kl-divergence's measure)")
    parity_max_kld: Optional[float] = at_least(0, None, help="fail the stage when the mean KL divergence "
                                                             "(nats per token) is higher")
    parity_images: Optional[DatasetSpec] = setting(None, "a vision-language model's image questions both models "
                                                         "answer too (prompt records with an image part)",
                                                   purpose="prompt", images=True)

    def memory_profile(self, sources):

        # the source generates in batches of 32 (the transformers backend's default), then the export does
        return Workload(kind="generate", batch=32, new_tokens=self.parity_max_new_tokens if self.parity else 1)


def compare_with_source(cfg: ParityFields, source: Artifact, exported: Artifact, ctx, dtype: Optional[str] = None) -> dict:
    """Compare greedy outputs of `exported` with `source`; returns metrics prefixed `parity_`."""
    if not cfg.parity:
        return {}
    records = load(cfg.parity_prompts, "gsm8k")
    records = records[:cfg.parity_limit] if cfg.parity_limit else records
    prompts = [chat_prompt(_source_tokenizer(source, ctx), r["question"]) for r in records]
    cached = _reference_file(source, prompts, cfg.parity_max_new_tokens, dtype, ctx)
    image_records = _image_records(source, cfg, ctx)
    want_images, reference, forced = None, None, None
    if cached is not None and cached.is_file() and not image_records:
        # another export of the same model already generated these
        want = [Generation(**g) for g in json.loads(cached.read_text())]
        ctx.log(f"parity: the source's {len(want)} greedy answers reused from {cached}")
    else:  # only now load the source model (a cache hit needs its tokenizer alone)
        reference = open_backend(source, ctx, dtype)
        want = reference.generate(prompts, cfg.parity_max_new_tokens, progress=f"[{ctx.name}] parity: source")
        want_images = _answer_images(reference, image_records, cfg, ctx, "source")
        if cached is not None:
            cached.parent.mkdir(parents=True, exist_ok=True)
            write_json_atomic(cached, [dataclasses.asdict(g) for g in want])
    if cfg.parity_kld:
        reference = reference or open_backend(source, ctx, dtype)
        tokenizer = _source_tokenizer(source, ctx)
        seqs = sequences(tokenizer(prompts, add_special_tokens=False)["input_ids"], [g.token_ids for g in want])
        forced = SourceLogProbs(reference, seqs, ctx.out_dir, progress=f"[{ctx.name}] divergence: source")
    if reference is not None:
        reference.close()
    candidate = open_backend(exported, ctx, dtype)
    got = candidate.generate(prompts, cfg.parity_max_new_tokens, progress=f"[{ctx.name}] parity: export")
    got_images = _answer_images(candidate, image_records, cfg, ctx, "export") if want_images is not None else None
    divergence = forced.divergence(candidate, progress=f"[{ctx.name}] divergence: export") if forced else {}
    candidate.close()
    metrics = compare(records, want, got) | divergence
    if want_images is not None and got_images is not None:
        metrics.update(image_parity(image_records, want_images, got_images, ctx.out_dir / "parity_images.jsonl"))
        ctx.log(f"image parity: {metrics['parity_image_identical']:.1%} of {len(image_records)} image prompts "
                f"token-identical, token agreement {metrics['parity_image_token_agreement']:.1%}")
    metrics["parity_backend"] = candidate.name
    with open(ctx.out_dir / "parity.jsonl", "w") as handle:
        for record, a, b in zip(records, want, got):
            handle.write(json.dumps({"question": record["question"], "target": record["target"],
                                     "source": a.text, "export": b.text, "identical": a.token_ids == b.token_ids},
                                    ensure_ascii=False) + "\n")
    ctx.log(f"parity vs {source.stage or source.path}: {metrics['parity_identical']:.1%} of {len(records)} prompts "
            f"token-identical, token agreement {metrics['parity_token_agreement']:.1%}, accuracy "
            f"{metrics['parity_source_accuracy']:.1%} -> {metrics['parity_accuracy']:.1%}")
    if divergence:
        ctx.log(f"divergence on {divergence['parity_kld_positions']} answer tokens: mean KLD "
                f"{divergence['parity_kld_mean']:.6f} (median {divergence['parity_kld_median']:.6f}, 99% "
                f"{divergence['parity_kld_p99']:.6f}, max {divergence['parity_kld_max']:.6f}), same top token "
                f"{divergence['parity_same_top']:.1%}")
    if (cfg.parity_max_kld is not None and divergence
            and divergence["parity_kld_mean"] > cfg.parity_max_kld):
        raise ParityError(f"{ctx.name}: mean KL divergence from the source {divergence['parity_kld_mean']:.6f} "
                          f"nats per token, above parity_max_kld {cfg.parity_max_kld}")
    if cfg.parity_min_identical is not None and metrics["parity_identical"] < cfg.parity_min_identical:
        raise ParityError(f"{ctx.name}: only {metrics['parity_identical']:.1%} of prompts give the source's greedy "
                          f"tokens (parity_min_identical {cfg.parity_min_identical}); see {ctx.out_dir}/parity.jsonl")
    return metrics


def _image_records(source: Artifact, cfg: ParityFields, ctx) -> list[dict]:
    """The image questions, for a vision-language source (none for a text model)."""
    if cfg.parity_images is None or not is_vision(ctx.model, source.model_under()):
        return []
    records = load(cfg.parity_images, "prompt")
    return records[:cfg.parity_limit] if cfg.parity_limit else records


def _answer_images(backend, records: list[dict], cfg: ParityFields, ctx, side: str) -> list[Generation] | None:
    """Greedy answers to the image questions, where this backend takes images (None: a text model)."""
    from pipeline.evaluation.common import image_prompts

    if not records or getattr(backend, "processor", None) is None:
        return None
    prompts, images = image_prompts(backend, records, ctx)
    return backend.generate(prompts, cfg.parity_max_new_tokens, progress=f"[{ctx.name}] image parity: {side}",
                            images=images)


def image_parity(records: list[dict], want: list[Generation], got: list[Generation], path) -> dict:
    """The text comparison's shares for image prompts (parity_image_*), each pair kept in `path`."""
    found = compare([{"target": None}] * len(records), want, got)
    with open(path, "w") as handle:
        for record, a, b in zip(records, want, got):
            handle.write(json.dumps({"prompt": record["prompt"], "answer": record.get("answer"), "source": a.text,
                                     "export": b.text, "identical": a.token_ids == b.token_ids},
                                    ensure_ascii=False) + "\n")
    return {"parity_image_n": found["parity_n"], "parity_image_identical": found["parity_identical"],
            "parity_image_token_agreement": found["parity_token_agreement"]}


def _source_tokenizer(source: Artifact, ctx):
    """The tokenizer the source's backend renders prompts with (pipeline.backends.hf.HFBackend's)."""
    return load_tokenizer(source.tokenizer_dir(), ctx.model, padding_side="left")


def _reference_file(source: Artifact, prompts: list[str], max_new_tokens: int, dtype, ctx):
    """Where the source's greedy answers to these prompts are kept, so that the GGUF, bnb and GPTQ exports of
    one model generate them once (quant_lab: six exports of the same source). None where the source has no
    content fingerprint (a model merged inside the stage, or a hub id whose revision may move)."""
    import importlib.metadata

    if not source.fingerprint or source.fingerprint.startswith("hub-"):
        return None
    versions = [importlib.metadata.version(p) for p in ("torch", "transformers")]
    key = hash_json([source.fingerprint, source.path, prompts, max_new_tokens, dtype, ctx.device, versions])
    return cache_root() / "parity" / f"{key[:32]}.json"


def compare(records: list[dict], want: list[Generation], got: list[Generation]) -> dict:
    """Identical sequences, per-token agreement up to the first divergence, accuracy and EOS stops."""
    identical = sum(a.token_ids == b.token_ids for a, b in zip(want, got))
    agreement = []
    for a, b in zip(want, got):
        longest = max(len(a.token_ids), len(b.token_ids), 1)
        prefix = next((i for i, (x, y) in enumerate(zip(a.token_ids, b.token_ids)) if x != y),
                      min(len(a.token_ids), len(b.token_ids)))
        agreement.append(prefix / longest if a.token_ids != b.token_ids else 1.0)
    n = max(len(records), 1)
    right = lambda outs: sum(extract_answer(o.text) == r["target"] for r, o in zip(records, outs)) / n  # noqa: E731
    source_acc, export_acc = right(want), right(got)
    return {
        "parity_n": len(records),
        "parity_identical": round(identical / n, 4),
        "parity_token_agreement": round(sum(agreement) / n, 4),
        "parity_source_accuracy": round(source_acc, 4),
        "parity_accuracy": round(export_acc, 4),
        "parity_accuracy_delta": round(export_acc - source_acc, 4),
        "parity_source_stopped": round(sum(g.stopped for g in want) / n, 4),
        "parity_stopped": round(sum(g.stopped for g in got) / n, 4),
    }
