"""Export divergence (exports/divergence.py) against torch's own KL divergence on the same distributions:
the float16 store on disk changes the figures only below rounding, and the shares and percentiles
are the ones computed directly."""
import numpy as np
import torch

from exports.divergence import SourceLogProbs, sequences


class Table:
    """Fixed next-token distributions for each position of each sequence: the boundary under test is
    the arithmetic, so both sides read prepared log-probabilities (the backends' own `log_probs` are
    exercised on real models by tests/test_gguf.py)."""

    def __init__(self, rows: dict[int, np.ndarray]):
        self.rows = rows

    def log_probs(self, ids, first):
        return self.rows[len(ids)]


def test_kld_and_same_top_equal_torchs_on_the_same_distributions(tmp_path):
    generator = torch.Generator().manual_seed(0)
    seqs = sequences([[1, 2, 3], [4, 5]], [[7, 8, 9, 10], [11, 12, 13, 14, 15, 16]])
    assert [(len(s.ids), s.first) for s in seqs] == [(7, 3), (8, 2)]
    source, export = {}, {}
    for seq in seqs:
        logits = torch.randn(len(seq.ids) - seq.first, 300, generator=generator) * 3
        noisy = logits + torch.randn(logits.shape, generator=generator) * 0.3
        source[len(seq.ids)] = torch.log_softmax(logits, -1).numpy()
        export[len(seq.ids)] = torch.log_softmax(noisy, -1).numpy()

    stored = SourceLogProbs(Table(source), seqs, tmp_path)
    found = stored.divergence(Table(export))
    assert list(tmp_path.iterdir()) == []  # the float16 file is gone once scored

    p = torch.cat([torch.from_numpy(source[n]) for n in sorted(source)]).double()
    q = torch.cat([torch.from_numpy(export[n]) for n in sorted(export)]).double()
    per_position = torch.nn.functional.kl_div(q, p, log_target=True, reduction="none").sum(-1)
    assert found["parity_kld_positions"] == 10
    assert abs(found["parity_kld_mean"] - per_position.mean().item()) < 1e-3 * per_position.mean().item()  # float16 store: 4e-4 seen
    assert abs(found["parity_kld_max"] - per_position.max().item()) < 1e-3 * per_position.max().item()
    assert abs(found["parity_kld_median"] - float(np.median(per_position.numpy()))) < 1e-3 * per_position.mean().item()
    assert found["parity_same_top"] == round((p.argmax(-1) == q.argmax(-1)).double().mean().item(), 4)
    assert 0 < found["parity_same_top"] < 1  # the noise moved some top tokens, not all


def test_identical_distributions_diverge_by_nothing_and_empty_answers_are_skipped(tmp_path):
    seqs = sequences([[1, 2], [3]], [[], [4, 5, 6]])
    assert len(seqs) == 1
    rows = {4: torch.log_softmax(torch.randn(3, 50) * 4, -1).numpy()}
    found = SourceLogProbs(Table(rows), seqs, tmp_path).divergence(Table(rows))
    assert found["parity_kld_mean"] < 1e-6 and found["parity_same_top"] == 1.0
