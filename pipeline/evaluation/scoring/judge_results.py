"""What a judge run returns: per-item verdicts with their texts, summaries, and the jsonl they write."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional

# ---------------------------------------------------------------------------------------------- results

class _Records:
    """What both result kinds share: one JSON line per item (texts included), and the whole as a dict."""

    def write_jsonl(self, path: Path, items: Optional[list[dict]] = None) -> Path:
        return _write_jsonl(Path(path), self.records(items))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class JudgeResult(_Records):
    scores: list[Optional[int]]              # per item: 1..10, None when unparsable or failed
    verdicts: list[Optional[str]]            # the judge's raw text (None when the request failed)
    errors: list[Optional[str]]              # why a request failed (scrubbed of the URL and key)
    languages: list[str]
    n: int
    n_parsed: int
    n_unparsable: int
    n_failed: int
    mean_score: Optional[float]              # over parsed verdicts only (None when there are none)
    distribution: dict[int, int]             # score -> count, 1..10
    seconds: float
    model: str = ""

    def summary(self) -> dict[str, Any]:
        """The numbers for a tracker or report (no texts)."""
        out = {k: getattr(self, k) for k in ("n", "n_parsed", "n_unparsable", "n_failed", "mean_score", "seconds")}
        out["distribution"] = {str(k): v for k, v in self.distribution.items()}
        return out

    def records(self, items: Optional[list[dict]] = None) -> list[dict[str, Any]]:
        rows = []
        for i in range(self.n):
            row = {"index": i, "score": self.scores[i], "language": self.languages[i],
                   "status": "failed" if self.errors[i] else ("parsed" if self.scores[i] is not None else "unparsable"),
                   "verdict": self.verdicts[i], "error": self.errors[i]}
            if items is not None:
                row.update({k: items[i].get(k) for k in ("question", "answer", "reference") if k in items[i]})
            rows.append(row)
        return rows



@dataclass
class PairwiseResult(_Records):
    outcomes: list[str]                      # per item: a | b | tie | inconsistent | unparsable | failed
    picks: list[list[Optional[str]]]         # per item: [verdict with a first, verdict with b first] (A/B/C/None)
    verdicts: list[list[Optional[str]]]      # the judge's raw texts, same order
    errors: list[Optional[str]]
    n: int
    n_wins_a: int
    n_wins_b: int
    n_ties: int                              # both orders said [[C]]
    n_inconsistent: int                      # the two orders disagree: counted as a tie
    n_unparsable: int
    n_failed: int
    win_rate_a: Optional[float]              # over decided items (n - n_unparsable - n_failed)
    win_rate_b: Optional[float]
    tie_rate: Optional[float]                # ties + inconsistent
    seconds: float
    model: str = ""

    def summary(self) -> dict[str, Any]:
        keys = ("n", "n_wins_a", "n_wins_b", "n_ties", "n_inconsistent", "n_unparsable", "n_failed", "win_rate_a",
                "win_rate_b", "tie_rate", "seconds")
        return {k: getattr(self, k) for k in keys}

    def records(self, items: Optional[list[dict]] = None) -> list[dict[str, Any]]:
        rows = []
        for i in range(self.n):
            row = {"index": i, "outcome": self.outcomes[i], "pick_a_first": self.picks[i][0],
                   "pick_b_first": self.picks[i][1], "verdict_a_first": self.verdicts[i][0],
                   "verdict_b_first": self.verdicts[i][1], "error": self.errors[i]}
            if items is not None:
                row.update({k: items[i].get(k) for k in ("question", "answer_a", "answer_b", "reference")
                            if k in items[i]})
            rows.append(row)
        return rows



def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path
