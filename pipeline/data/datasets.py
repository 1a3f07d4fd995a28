"""Datasets for every stage: where they come from, what they must contain, what stages get.

A stage names its data with a DatasetSpec (from conf/data/*.yaml) and a purpose. `validate_records`
validates every record before any training starts, so a bad line fails the plan in seconds
instead of a run hours in; `load` hands the stage records in one canonical shape per purpose:

    sft         {"messages": [...]}  ending with an assistant message
    preference  {"prompt": [...], "chosen": [...], "rejected": [...]}
    prompt      {"prompt": [...], "answer": str | None, **other keys}   (RL prompts)
    gsm8k       {"question": str, "answer": str, "target": str}
    text        {"text": str}

where messages are [{"role": system|user|assistant|tool, "content": str}, ...].
"""
from __future__ import annotations

from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any, Dict, Iterator, Mapping, Optional

from omegaconf import MISSING

from pipeline import paths
from pipeline.data.formats import FORMATS, converter, detect
from pipeline.data.problems import DataError, Invalid, kind_name, summarise
from pipeline.data.readers import entries, existing_file, is_hub, where_of
from pipeline.hashing import file_digest
from pipeline.hub import hub_commit
from pipeline.ranges import at_least

PURPOSES = ("sft", "preference", "prompt", "gsm8k", "text", "instruct")


@dataclass
class DatasetSpec:
    """One dataset as a config names it; types stay OmegaConf-compatible for structured configs."""

    path: str = MISSING            # local .jsonl/.json/.csv/.parquet (absolute or project-root relative), or a hub id
    format: str = "auto"           # auto | messages | alpaca | sharegpt | preference | prompt | gsm8k | text
    split: str = "train"           # hub split
    subset: Optional[str] = None   # hub config name
    revision: Optional[str] = None  # hub branch, tag or commit (null: main); its commit enters the fingerprint
    limit: Optional[int] = at_least(1, None)  # keep the first N records
    columns: Dict[str, str] = field(default_factory=dict)  # source column -> canonical key


# ---------------------------------------------------------------------------------------------
# Public API

def resolve_path(path: str) -> Path:
    """pipeline.paths' rule: the working folder, then the project root."""
    return paths.resolve(path)


def validate_records(spec: DatasetSpec | Mapping[str, Any] | str, purpose: str) -> int:
    """Validate every record for `purpose`; return the record count or raise DataError."""
    return sum(1 for _ in _canonical(spec, purpose))


def load(spec: DatasetSpec | Mapping[str, Any] | str, purpose: str) -> list[dict]:
    """Every record in the canonical shape for `purpose` (validated as `check` does)."""
    return list(_canonical(spec, purpose))


_DIGESTS: dict[tuple[str, int, int], str] = {}  # (path, mtime_ns, size) -> digest: plans re-check often


def fingerprint(spec: DatasetSpec | Mapping[str, Any] | str) -> str:
    """sha256 of a local file's bytes; for a hub dataset, its id, subset, split and resolved commit."""
    spec = _as_spec(spec)
    if is_hub(spec.path):
        return f"hub:{spec.path}:{spec.subset or ''}:{spec.split}@{hub_commit(spec.path, spec.revision, 'dataset')}"
    path = existing_file(spec.path)
    stat = path.stat()
    key = (str(path), stat.st_mtime_ns, stat.st_size)
    if key not in _DIGESTS:
        _DIGESTS[key] = file_digest(path)
    return _DIGESTS[key]


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


def _canonical(spec: DatasetSpec | Mapping[str, Any] | str, purpose: str) -> Iterator[dict]:
    """Yield canonical records; after the last one, raise DataError if any record was bad."""
    if purpose not in PURPOSES:
        raise ValueError(f"unknown data purpose '{purpose}' (known: {', '.join(PURPOSES)})")
    spec = _as_spec(spec)
    where = where_of(spec)
    if spec.format != "auto" and spec.format not in FORMATS:
        raise DataError(f"{where}: unknown format '{spec.format}' (known: auto, {', '.join(FORMATS)})")
    if spec.limit is not None and spec.limit < 1:
        raise DataError(f"{where}: limit must be a positive number of records, got {spec.limit}")
    convert = None if spec.format == "auto" else converter(spec.format, purpose, where)
    errors: list[str] = []
    count = 0
    for location, item in islice(entries(spec, where), spec.limit):
        count += 1
        try:
            record = _record(item, spec.columns)
            if convert is None:
                convert = converter(detect(record, location), purpose, where, detected=True)
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
