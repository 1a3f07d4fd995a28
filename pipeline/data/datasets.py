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

where messages are [{"role": system|user|assistant|tool, "content": str}, ...].
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterator, Mapping, Optional

from omegaconf import MISSING

from pipeline import paths
from pipeline.data.formats import FORMATS, converter, detect
from pipeline.data.problems import DataError, Invalid, kind_name, summarise
from pipeline.data.readers import entries, existing_file, is_hub, where_of
from pipeline.hashing import content_digest
from pipeline.hub import hub_commit
from pipeline.ranges import at_least, setting

if TYPE_CHECKING:
    from pipeline.data.check_cache import CheckCache

PURPOSES = ("sft", "preference", "prompt", "gsm8k", "text", "instruct")


@dataclass
class DatasetSpec:
    """One dataset as a config names it; types stay OmegaConf-compatible for structured configs."""

    path: str = setting(MISSING, "local .jsonl/.json/.csv/.parquet (absolute or project-root relative), or a hub id")
    format: str = setting("auto", "auto | messages | alpaca | sharegpt | preference | prompt | gsm8k | text")
    split: str = setting("train", "hub split")
    subset: Optional[str] = setting(None, "hub config name")
    revision: Optional[str] = setting(None, "hub branch, tag or commit (null: main); its commit enters the fingerprint")
    limit: Optional[int] = at_least(1, None, help="keep the first N records")
    columns: Dict[str, str] = field(default_factory=dict, metadata={"help": "source column -> canonical key"})


# ---------------------------------------------------------------------------------------------
# Public API

def resolve_path(path: str) -> Path:
    """pipeline.paths' rule: the working folder, then the project root."""
    return paths.resolve(path)


ARROW_FROM_BYTES = 8 << 20  # local files from this size are checked through Arrow (below: record by record)
HUB_SAMPLE = 64             # hub rows checked at plan time; all of them when the stage prepares the split


@dataclass
class DataCheck:
    records: Optional[int]  # None: a hub split whose size its card does not give
    format: str
    sampled: int = setting(0, "hub: rows checked at plan time (0: every record was checked)")
    cached: bool = setting(False, "the result came from the store's check cache (no record was read)")

    def describe(self, purpose: str) -> str:
        if self.sampled:
            size = f"{self.records} records" if self.records is not None else "size unknown"
            return f"{size}, {purpose}; {self.sampled} sampled, all checked when prepared"
        return f"{self.records} records, {purpose}" + (", checked before" if self.cached else "")


def check(spec: DatasetSpec | Mapping[str, Any] | str, purpose: str, cache: "CheckCache | None" = None) -> DataCheck:
    """Validate `spec` for `purpose` (every record of a file, a sample of a hub split); raise DataError."""
    spec = _as_spec(spec)
    _check_spec(spec, purpose)
    if is_hub(spec.path):
        return _check_hub_sample(spec, purpose)
    path = existing_file(spec.path)
    key = None
    if cache is not None:
        key = cache.check_key(cache.digest(path), purpose=purpose, format=spec.format, limit=spec.limit,
                              columns=spec.columns, where=where_of(spec))
        known = cache.result(key)
        if known:
            if known.get("error"):
                raise DataError(known["error"])
            return DataCheck(known["records"], known["format"], cached=True)
    try:
        result = _check_file(spec, purpose, path)
    except DataError as e:
        if key:
            cache.keep(key, {"error": str(e)})
        raise
    if key:
        cache.keep(key, {"records": result.records, "format": result.format})
    return result


def validate_records(spec: DatasetSpec | Mapping[str, Any] | str, purpose: str) -> int:
    """`check` without a cache: the record count (of a hub split: the rows sampled) or DataError."""
    result = check(spec, purpose)
    return result.sampled or result.records


def load(spec: DatasetSpec | Mapping[str, Any] | str, purpose: str) -> list[dict]:
    """Every record in the canonical shape for `purpose`, as Python dicts: for the small sets of evals and
    exports. Training data goes through `prepared`."""
    return list(_canonical(spec, purpose))


def prepared(spec: DatasetSpec | Mapping[str, Any] | str, purpose: str,
             transform: Optional[Callable[[dict], dict]] = None, hardware: Optional[dict] = None, desc: str = ""):
    """The data set as a datasets.Dataset in the stage's form (pipeline.data.arrow.prepared)."""
    from pipeline.data import arrow

    spec = _as_spec(spec)
    _check_spec(spec, purpose)
    return arrow.prepared(spec, purpose, transform, hardware, desc)


def fingerprint(spec: DatasetSpec | Mapping[str, Any] | str, cache: "CheckCache | None" = None) -> str:
    """sha256 of a local file's bytes; for a hub dataset, its id, subset, split and resolved commit."""
    spec = _as_spec(spec)
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


def _check_file(spec: DatasetSpec, purpose: str, path: Path) -> DataCheck:
    if path.stat().st_size >= ARROW_FROM_BYTES:
        from pipeline.data import arrow

        try:
            checked = arrow.check_file(spec, purpose)
            return DataCheck(checked.records, checked.format)
        except arrow.NotArrow:
            pass  # a malformed line or a key whose type changes: the record readers name it or read it
    seen: dict = {}
    count = sum(1 for _ in _canonical(spec, purpose, seen))
    return DataCheck(count, seen["format"])


def _check_hub_sample(spec: DatasetSpec, purpose: str) -> DataCheck:
    """The split's first HUB_SAMPLE rows, streamed (nothing else is downloaded); its size from the card."""
    from pipeline.data.readers import hub_stream

    rows, total = hub_stream(spec, where_of(spec))
    sample = dataclasses.replace(spec, limit=min(spec.limit or HUB_SAMPLE, HUB_SAMPLE))
    seen: dict = {}
    count = sum(1 for _ in _canonical(sample, purpose, seen, source=rows))
    records = min(total, spec.limit) if total is not None and spec.limit else total
    return DataCheck(records, seen["format"], sampled=count)


# ---------------------------------------------------------------------------------------------
# Spec handling and the validation loop

def _as_spec(spec: DatasetSpec | Mapping[str, Any] | str) -> DatasetSpec:
    """Stages may pass a DatasetSpec, a plain dict or DictConfig, or a bare path."""
    if isinstance(spec, str):
        spec = DatasetSpec(path=spec)
    elif isinstance(spec, Mapping):
        fields = dict(spec)
        fields["columns"] = dict(fields.get("columns") or {})
        try:
            spec = DatasetSpec(**fields)
        except TypeError as e:  # an unknown key
            raise DataError(f"invalid dataset spec {fields}: {e}") from None
    if not spec.path or spec.path == MISSING:
        raise DataError("dataset spec has no path: set path to a local file or a hub dataset id")
    return spec


def _check_spec(spec: DatasetSpec, purpose: str) -> None:
    if purpose not in PURPOSES:
        raise ValueError(f"unknown data purpose '{purpose}' (known: {', '.join(PURPOSES)})")
    where = where_of(spec)
    if spec.format != "auto" and spec.format not in FORMATS:
        raise DataError(f"{where}: unknown format '{spec.format}' (known: auto, {', '.join(FORMATS)})")
    if spec.limit is not None and spec.limit < 1:
        raise DataError(f"{where}: limit must be a positive number of records, got {spec.limit}")


def _canonical(spec: DatasetSpec | Mapping[str, Any] | str, purpose: str, seen: Optional[dict] = None,
               source: Optional[Iterator] = None) -> Iterator[dict]:
    """Yield canonical records; after the last one, raise DataError if any record was bad. `seen` gets the
    format; `source` replaces the spec's reader (a hub stream)."""
    spec = _as_spec(spec)
    _check_spec(spec, purpose)
    where = where_of(spec)
    convert = None if spec.format == "auto" else converter(spec.format, purpose, where)
    if seen is not None and convert is not None:
        seen["format"] = spec.format
    errors: list[str] = []
    count = 0
    for location, item in islice(source if source is not None else entries(spec, where), spec.limit):
        count += 1
        try:
            record = _record(item, spec.columns)
            if convert is None:
                fmt = detect(record, location)
                convert = converter(fmt, purpose, where, detected=True)
                if seen is not None:
                    seen["format"] = fmt
            yield convert(record)
        except Invalid as e:
            errors.append(f"{location}: {e}")
    if count == 0:
        raise DataError(f"{where}: empty file (no records)" if not is_hub(spec.path)
                        else f"{where}: split '{spec.split}' has no records")
    if errors:
        raise DataError(summarise(errors))


def _record(item: Any, columns: Mapping[str, str]) -> dict:
    """A source entry as a dict with canonical key names; null values count as absent."""
    if isinstance(item, Invalid):
        raise item
    if not isinstance(item, dict):
        raise Invalid(f"expected a JSON object, got {kind_name(item)}")
    record = {k: v for k, v in item.items() if k not in columns and v is not None}
    record.update({new: item[old] for old, new in columns.items() if item.get(old) is not None})
    return record
