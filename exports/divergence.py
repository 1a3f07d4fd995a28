"""Quantization loss as llama.cpp measures it (`llama-perplexity --kl-divergence`): the source and the
export read the same tokens (each parity prompt followed by the source's own greedy answer), and at
every answer position the export's next-token distribution is compared with the source's.

Figures: mean, median, 99th percentile and maximum KL(source || export) in nats per position, and the
share of positions where both put the same token first ("same top p" in llama.cpp's output).

The two models are never in memory together: the source's log-probabilities go to a float16 file
first (as llama.cpp's `--kl-divergence-base` file keeps its base logits), then the export is scored
against it. Each stored row is renormalised in float64 before use; float16 rounding then moves the
mean by under 0.1% (tests/test_divergence.py); the source's top token is kept exactly beside it.
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.backends.base import Progress


@dataclass
class ForcedSequence:
    ids: list[int]   # the prompt's tokens, then the answer's
    first: int       # the first answer position: positions >= first are scored


def sequences(prompt_ids: list[list[int]], answers: list[list[int]]) -> list[ForcedSequence]:
    """Teacher-forced inputs: every prompt with a non-empty answer, answer appended."""
    return [ForcedSequence(p + a, len(p)) for p, a in zip(prompt_ids, answers) if a]


class SourceLogProbs:
    """The source's log-probabilities at every scored position, on disk (float16) in a temporary folder."""

    def __init__(self, backend, seqs: list[ForcedSequence], folder: Path, progress: str | None = None):
        self.seqs = seqs
        total = sum(len(s.ids) - s.first for s in seqs)
        self._tmp = tempfile.TemporaryDirectory(prefix="kld-", dir=folder)
        self.rows = None
        self.top = np.zeros(total, dtype=np.int64)
        at = 0
        with Progress(progress, len(seqs)) as bar:
            for seq in seqs:
                log_probs = backend.log_probs(seq.ids, seq.first)
                if self.rows is None:
                    self.rows = np.lib.format.open_memmap(Path(self._tmp.name) / "source.npy", mode="w+",
                                                          dtype=np.float16, shape=(total, log_probs.shape[1]))
                self.rows[at:at + len(log_probs)] = log_probs
                self.top[at:at + len(log_probs)] = log_probs.argmax(axis=1)
                at += len(log_probs)
                bar.update(1)

    def divergence(self, backend, progress: str | None = None) -> dict:
        """Score the export on the same sequences; the figures as `parity_kld_*` and `parity_same_top`."""
        kld, same, at = [], [], 0
        with Progress(progress, len(self.seqs)) as bar:
            for seq in self.seqs:
                export = np.asarray(backend.log_probs(seq.ids, seq.first), dtype=np.float64)
                source = np.asarray(self.rows[at:at + len(export)], dtype=np.float64)
                vocab = min(source.shape[1], export.shape[1])  # a GGUF may pad its vocabulary
                source, export = _renormalised(source[:, :vocab]), _renormalised(export[:, :vocab])
                kld.extend((np.exp(source) * (source - export)).sum(axis=1).clip(min=0.0))
                same.extend(export.argmax(axis=1) == self.top[at:at + len(export)])
                at += len(export)
                bar.update(1)
        self.close()
        values = np.asarray(kld)
        if not len(values):
            return {}
        return {"parity_kld_positions": int(len(values)), "parity_kld_mean": round(float(values.mean()), 6),
                "parity_kld_median": round(float(np.median(values)), 6),
                "parity_kld_p99": round(float(np.percentile(values, 99)), 6),
                "parity_kld_max": round(float(values.max()), 6),
                "parity_same_top": round(float(np.mean(same)), 4)}

    def close(self) -> None:
        self.rows = None
        self._tmp.cleanup()


def _renormalised(log_probs: np.ndarray) -> np.ndarray:
    """Rows that are exact log-distributions again (a float16 row sums to 1 only within rounding)."""
    peak = log_probs.max(axis=1, keepdims=True)
    return log_probs - peak - np.log(np.exp(log_probs - peak).sum(axis=1, keepdims=True))
