"""Canonical records one by one: a source's entries with their columns renamed, converted for a purpose
(the format given, or detected from the first record), every bad record named by its location."""
from __future__ import annotations

from itertools import islice
from typing import Any, Callable, Iterator, Mapping, Optional

from pipeline.data.formats import FORMATS, converter, detect
from pipeline.data.images import ImageRefs
from pipeline.data.parts import has_parts
from pipeline.data.problems import DataError, Invalid, kind_name, summarise
from pipeline.data.readers import entries, folder_of, is_hub, where_of
from pipeline.data.spec import PURPOSES, DatasetSpec, as_spec


def check_spec(spec: DatasetSpec, purpose: str) -> None:
    if purpose not in PURPOSES:
        raise ValueError(f"unknown data purpose '{purpose}' (known: {', '.join(PURPOSES)})")
    where = where_of(spec)
    if spec.format != "auto" and spec.format not in FORMATS:
        raise DataError(f"{where}: unknown format '{spec.format}' (known: auto, {', '.join(FORMATS)})")
    if spec.limit is not None and spec.limit < 1:
        raise DataError(f"{where}: limit must be a positive number of records, got {spec.limit}")


def canonical(spec: DatasetSpec | Mapping[str, Any] | str, purpose: str, seen: Optional[dict] = None,
              source: Optional[Iterator] = None, files: Optional[dict] = None) -> Iterator[dict]:
    """Yield canonical records; after the last one, raise DataError if any record was bad. `seen` gets the
    format; `source` replaces the spec's reader (a hub stream); `files` the local images (ImageRefs)."""
    spec = as_spec(spec)
    check_spec(spec, purpose)
    where = where_of(spec)
    convert = None if spec.format == "auto" else record_converter(spec, spec.format, purpose, where, files=files)
    if seen is not None and convert is not None:
        seen["format"] = spec.format
    errors: list[str] = []
    count = 0
    for location, item in islice(source if source is not None else entries(spec, where), spec.limit):
        count += 1
        try:
            record = as_record(item, spec.columns)
            if convert is None:
                fmt = detect(record, location)
                convert = record_converter(spec, fmt, purpose, where, detected=True, files=files)
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


def record_converter(spec: DatasetSpec, fmt: str, purpose: str, where: str, detected: bool = False,
                     verify: bool = True, files: Optional[dict] = None) -> Callable[[dict], dict]:
    """The converter of `fmt` for `purpose` (pipeline/data/formats.py), its records' images resolved and, with
    `verify`, checked (pipeline/data/images.py): the plan verifies, the stage that maps the checked file not."""
    convert = converter(fmt, purpose, where, detected)
    images = ImageRefs(folder_of(spec), spec.remote_images, verify, files)
    return lambda record: images.resolved(record) if has_parts(record := convert(record)) else record


def as_record(item: Any, columns: Mapping[str, str]) -> dict:
    """A source entry as a dict with canonical key names; null values count as absent."""
    if isinstance(item, Invalid):
        raise item
    if not isinstance(item, dict):
        raise Invalid(f"expected a JSON object, got {kind_name(item)}")
    record = {k: v for k, v in item.items() if k not in columns and v is not None}
    record.update({new: item[old] for old, new in columns.items() if item.get(old) is not None})
    return record
