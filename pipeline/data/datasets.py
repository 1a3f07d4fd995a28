"""Datasets for every stage: where they come from, what they must contain, what stages get.

A stage names its data with a DatasetSpec (from conf/data/*.yaml) and a purpose. `check` validates
every record of a local file before any training starts (a bad line fails the plan in seconds
instead of a run hours in; a large file through Arrow, pipeline/data/arrow.py; the result kept per
file version, pipeline/data/check_cache.py), and a sample of a hub split. Training stages get a
`datasets.Dataset` from `prepared` (Arrow, memory-mapped, converted with `map`); evals and exports
read their small sets with `load`. Records have one canonical shape per purpose:

    sft         {"messages": [...]}  ending with an assistant message
    preference  {"prompt": [...], "chosen": [...], "rejected": [...]}
    prompt      {"prompt": [...], "answer": str | None, **other keys}   (RL prompts)
    gsm8k       {"question": str, "answer": str, "target": str}
    text        {"text": str}

where messages are [{"role": system|user|assistant|tool, "content": str | parts}, ...]; a record with
images has parts in every message, [{"type": "text", "text": str} | {"type": "image", "image": ref}, ...],
ref an absolute path, http(s) URL or data URL, each checked at plan time (pipeline/data/parts.py, images.py).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Optional

from pipeline.data import arrow, mixture, records
from pipeline.data.images import version
from pipeline.data.problems import DataError
from pipeline.data.readers import existing_file, hub_stream, is_hub, where_of
from pipeline.data.records import check_spec
from pipeline.data.spec import DatasetSpec, as_spec
from pipeline.hashing import content_digest
from pipeline.hub import hub_commit

if TYPE_CHECKING:
    from pipeline.data.check_cache import CheckCache

# ---------------------------------------------------------------------------------------------
# Public API

ARROW_FROM_BYTES = 8 << 20  # local files from this size are checked through Arrow (below: record by record)
HUB_SAMPLE = 64             # hub rows checked at plan time; all of them when the stage prepares the split


@dataclass
class DataCheck:
    records: Optional[int]  # None: a hub split whose size its card does not give
    format: str
    sampled: int = 0        # hub: rows checked at plan time (0: every record was checked)
    cached: bool = False    # the result came from the store's check cache (no record was read)
    mixture: str = ""       # a mixture: its entries, weights and expected shares

    def describe(self, purpose: str) -> str:
        if self.mixture:
            return f"{purpose}, {self.mixture}"
        if self.sampled:
            size = f"{self.records} records" if self.records is not None else "size unknown"
            return f"{size}, {purpose}; {self.sampled} sampled, all checked when prepared"
        return f"{self.records} records, {purpose}" + (", checked before" if self.cached else "")


def check(spec: DatasetSpec | Mapping[str, Any] | str, purpose: str, cache: "CheckCache | None" = None) -> DataCheck:
    """Validate `spec` for `purpose` (every record of a file, a sample of a hub split); raise DataError."""
    spec = as_spec(spec)
    if spec.mixture:
        return _check_mixture(spec, purpose, cache)
    check_spec(spec, purpose)
    if is_hub(spec.path):
        return _check_hub_sample(spec, purpose)
    path = existing_file(spec.path)
    key = None
    if cache is not None:
        key = cache.check_key(cache.digest(path), purpose=purpose, format=spec.format, limit=spec.limit,
                              columns=spec.columns, where=where_of(spec), remote_images=spec.remote_images)
        known = cache.result(key)
        if known and not _images_changed(known.get("images", {})):
            if known.get("error"):
                raise DataError(known["error"])
            return DataCheck(known["records"], known["format"], cached=True)
    files: dict = {}  # the images the records point at: one that changes, appears or goes re-checks the file
    try:
        result = _check_file(spec, purpose, path, files)
    except DataError as e:
        if key:
            cache.keep(key, {"error": str(e), "images": files})
        raise
    if key:
        cache.keep(key, {"records": result.records, "format": result.format, "images": files})
    return result


def load(spec: DatasetSpec | Mapping[str, Any] | str, purpose: str) -> list[dict]:
    """Every record in the canonical shape for `purpose`, as Python dicts: for the small sets of evals and
    exports. Training data goes through `prepared`; a mixture is drawn as training draws it."""
    spec = as_spec(spec)
    if spec.mixture:
        return list(prepared(spec, purpose).remove_columns(mixture.SOURCE_COLUMN))
    return list(records.canonical(spec, purpose))


def prepared(spec: DatasetSpec | Mapping[str, Any] | str, purpose: str,
             transform: Optional[Callable[[dict], dict]] = None, hardware: Optional[dict] = None, desc: str = ""):
    """The data set as a datasets.Dataset in the stage's form (pipeline.data.arrow.prepared); a mixture's rows
    carry their entry's index in mixture.SOURCE_COLUMN (mixture.split_sources takes it off)."""
    spec = as_spec(spec)
    if spec.mixture:
        parts = [prepared(dataclasses.replace(e.spec, streaming=e.spec.streaming or spec.streaming), purpose,
                          transform, hardware, f"{desc or purpose} ({e.name})") for e in mixture.entries(spec)]
        return mixture.interleave(parts, spec)
    check_spec(spec, purpose)
    if spec.streaming:
        return _streamed(spec, purpose, transform)
    return arrow.prepared(spec, purpose, transform, hardware, desc)


def _streamed(spec: DatasetSpec, purpose: str, transform: Optional[Callable[[dict], dict]]):
    """The records as a datasets.IterableDataset, read, converted and transformed as training asks for them
    (nothing cached, memory flat in the file's size). Deterministic: a resumed trainer replays it and skips
    what it consumed, so it goes on at the next record."""
    import datasets

    return datasets.IterableDataset.from_generator(_stream_records, gen_kwargs={"spec": spec, "purpose": purpose,
                                                                              "transform": transform})


def _stream_records(spec: DatasetSpec, purpose: str, transform):
    for record in records.canonical(spec, purpose):
        yield transform(record) if transform else arrow.arrow_form(record)


def fingerprint(spec: DatasetSpec | Mapping[str, Any] | str, cache: "CheckCache | None" = None) -> str:
    """sha256 of a local file's bytes; for a hub dataset, its id, subset, split and resolved commit; for a
    mixture, its entries' (their weights are in the stage's settings, which the fingerprint hashes too)."""
    spec = as_spec(spec)
    if spec.mixture:
        return "mixture:" + ",".join(fingerprint(e.spec, cache) for e in mixture.entries(spec))
    if is_hub(spec.path):
        return f"hub:{spec.path}:{spec.subset or ''}:{spec.split}@{hub_commit(spec.path, spec.revision, 'dataset')}"
    path = existing_file(spec.path)
    if cache is not None:
        return cache.digest(path)
    stat = path.stat()
    key = (str(path), stat.st_mtime_ns, stat.st_size)
    if key not in _DIGESTS:
        _DIGESTS[key] = content_digest(path)
    return _DIGESTS[key]


_DIGESTS: dict[tuple[str, int, int], str] = {}  # (path, mtime_ns, size) -> digest, when no store is at hand


def _check_mixture(spec: DatasetSpec, purpose: str, cache: "CheckCache | None") -> DataCheck:
    """Every entry checked as a single set would be; errors name the entry."""
    found = mixture.entries(spec)
    checks = []
    for i, entry in enumerate(found):
        try:
            checks.append(check(entry.spec, purpose, cache))
        except DataError as e:
            raise DataError(f"mixture[{i}] ({entry.name}): {e}") from None
    counts = [c.records for c in checks]
    return DataCheck(records=None if None in counts else sum(counts), format=",".join(c.format for c in checks),
                     sampled=sum(c.sampled for c in checks), cached=all(c.cached for c in checks),
                     mixture=mixture.describe(spec, counts))


def _images_changed(files: dict) -> bool:
    return any(version(Path(path)) != known for path, known in files.items())


def _check_file(spec: DatasetSpec, purpose: str, path: Path, files: dict) -> DataCheck:
    if path.stat().st_size >= ARROW_FROM_BYTES:
        try:
            checked = arrow.check_file(spec, purpose, files)
            return DataCheck(checked.records, checked.format)
        except arrow.NotArrow:
            pass  # a malformed line or a key whose type changes: the record readers name it or read it
    seen: dict = {}
    count = sum(1 for _ in records.canonical(spec, purpose, seen, files=files))
    return DataCheck(count, seen["format"])


def _check_hub_sample(spec: DatasetSpec, purpose: str) -> DataCheck:
    """The split's first HUB_SAMPLE rows, streamed (nothing else is downloaded); its size from the card."""
    rows, total = hub_stream(spec, where_of(spec))
    sample = dataclasses.replace(spec, limit=min(spec.limit or HUB_SAMPLE, HUB_SAMPLE))
    seen: dict = {}
    count = sum(1 for _ in records.canonical(sample, purpose, seen, source=rows))
    size = min(total, spec.limit) if total is not None and spec.limit else total
    return DataCheck(size, seen["format"], sampled=count)
