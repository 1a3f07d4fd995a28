"""Data mixtures: several sets trained on together, each record drawn from entry i with probability
weight_i / sum of weights (datasets' `interleave_datasets`, seeded), until the first entry runs out
(`stopping: first_exhausted`) or the last (`all_exhausted`: the others start again).

    data:
      sft:
        path: null
        mixture:
          - {path: embedded/data/mixture/math.jsonl, weight: 0.5}
          - {path: embedded/data/mixture/instruct.jsonl, weight: 0.3, name: instruct}
          - {path: org/chats, weight: 0.2, split: train, format: sharegpt}   # any DatasetSpec key

Each entry is checked at plan time like a single set; the plan shows its records, its weight and the
share of training rows it is expected to give; after training, `mixture_share/<name>` in the stage's
metrics is the share of rows each entry really gave (counted as the trainer's sampler draws them; not
with packing, where one row mixes entries). The mixture's own `limit` keeps its first N rows; `format`,
`columns` and the like belong to each entry."""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional

from pipeline.data.problems import DataError
from pipeline.data.spec import DatasetSpec, as_spec

SOURCE_COLUMN = "mixture_source"  # the entry index of each row of a prepared mixture (removed before training)


@dataclass
class Entry:
    name: str
    spec: DatasetSpec
    weight: float


def entries(spec: DatasetSpec) -> list[Entry]:
    """The mixture's entries, each a checked DatasetSpec with its weight; [] for a single set."""
    found: list[Entry] = []
    for i, item in enumerate(spec.mixture or []):
        where = f"mixture[{i}]"
        if not isinstance(item, Mapping):
            raise DataError(f"{where}: an entry is {{path, weight, ...}} (any dataset key), got {item!r}")
        fields = {str(k): v for k, v in item.items()}
        weight, name = fields.pop("weight", 1.0), fields.pop("name", None)
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) or weight <= 0:
            raise DataError(f"{where}.weight: {weight!r}; valid: a number > 0 (weights need not sum to 1)")
        if fields.get("mixture"):
            raise DataError(f"{where}: a mixture inside a mixture; list its entries in the outer one instead")
        try:
            entry_spec = as_spec(fields)
        except DataError as e:
            raise DataError(f"{where}: {e}") from None
        found.append(Entry(str(name or Path(str(entry_spec.path)).stem), entry_spec, float(weight)))
    names = [e.name for e in found]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise DataError(f"mixture: entries named {twice} more than once; give each a distinct `name`")
    return found


def probabilities(found: list[Entry]) -> list[float]:
    total = sum(e.weight for e in found)
    return [e.weight / total for e in found]


def expected_rows(records: list[Optional[int]], shares: list[float], stopping: str) -> Optional[int]:
    """Rows of the mixture: it stops when the first (or last) entry has given all its records, which
    happens near records_i / share_i draws; None when an entry's size is unknown (a hub split)."""
    if any(n is None for n in records):
        return None
    ends = [n / p for n, p in zip(records, shares)]
    return int(min(ends) if stopping == "first_exhausted" else max(ends))


def describe(spec: DatasetSpec, records: list[Optional[int]]) -> str:
    found = entries(spec)
    shares = probabilities(found)
    rows = expected_rows(records, shares, spec.stopping)
    rows = min(rows, spec.limit) if rows is not None and spec.limit else rows
    parts = [f"{e.name} {n if n is not None else '?'} records, weight {e.weight:g} ({p:.0%} of rows)"
             for e, n, p in zip(found, records, shares)]
    size = f"~{rows} rows" if rows is not None else "size unknown"
    return f"{len(found)} entries, {spec.stopping}, {size}: " + "; ".join(parts)


def interleave(parts: list, spec: DatasetSpec):
    """The entries' prepared datasets as one, each row tagged with its entry's index (SOURCE_COLUMN)."""
    import datasets

    found = entries(spec)
    tagged = [part.map(lambda _: {SOURCE_COLUMN: i}, desc=f"mixture: {e.name}") for i, (part, e)
              in enumerate(zip(parts, found))]
    mixed = datasets.interleave_datasets(tagged, probabilities=probabilities(found), seed=spec.mixture_seed,
                                         stopping_strategy=spec.stopping)
    if not spec.limit:
        return mixed
    return mixed.take(spec.limit) if isinstance(mixed, datasets.IterableDataset) else \
        mixed.select(range(min(spec.limit, len(mixed))))


def split_sources(dataset) -> tuple[Any, Optional[list[int]]]:
    """(the dataset without its entry tags, each row's entry index); (dataset, None) for a single set."""
    if SOURCE_COLUMN not in (dataset.column_names or []):
        return dataset, None
    if not hasattr(dataset, "__len__"):  # a stream: no sampler to count draws with
        return dataset.remove_columns(SOURCE_COLUMN), None
    return dataset.remove_columns(SOURCE_COLUMN), list(dataset[SOURCE_COLUMN])


def count_draws(trainer, sources: Optional[list[int]], spec: DatasetSpec) -> Optional["DrawCounter"]:
    """A DrawCounter on `trainer` for a mixture's rows (None for a single set)."""
    if sources is None:
        return None
    args = trainer.args
    rows = args.max_steps * args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size \
        if args.max_steps > 0 else int(len(sources) * args.num_train_epochs)
    counter = DrawCounter(sources, [e.name for e in entries(spec)], rows)
    counter.attach(trainer)
    return counter


class DrawCounter:
    """Counts, per entry, the rows a trainer's sampler hands out, up to the rows the training consumes
    (steps x batch x accumulation x processes: the loader reads a batch ahead). Under several processes
    each rank's sampler yields every rank's indices, so rank 0's count covers them all."""

    def __init__(self, sources: list[int], names: list[str], limit: int):
        self.sources, self.names, self.limit = sources, names, limit
        self.counts = [0] * len(names)

    def attach(self, trainer) -> None:
        """Wrap the trainer's sampler (transformers.Trainer._get_train_sampler) in a counting one."""
        make_sampler = trainer._get_train_sampler
        trainer._get_train_sampler = lambda *args, **kwargs: _Counting(make_sampler(*args, **kwargs), self)

    def take(self, index: int) -> None:
        if sum(self.counts) < self.limit:
            self.counts[self.sources[index]] += 1

    def metrics(self) -> dict[str, float]:
        drawn = sum(self.counts)
        if not drawn:
            return {}
        return {"mixture_rows": drawn, **{f"mixture_share/{n}": round(c / drawn, 4)
                                          for n, c in zip(self.names, self.counts)}}


class _Counting:
    def __init__(self, sampler, counter: DrawCounter):
        self.sampler, self.counter = sampler, counter

    def __iter__(self):
        for index in self.sampler:
            self.counter.take(int(index))
            yield index

    def __len__(self):
        return len(self.sampler)

    def __getattr__(self, name):  # set_epoch and the like reach the wrapped sampler
        return getattr(self.sampler, name)
